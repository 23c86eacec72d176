//! `build-images [OUT_DIR]`: builds (or takes from the cache) the project's container images as OCI
//! archives in OUT_DIR (default `target/images`); see `spiderpool_tests::images`. Prints the output
//! directory on its last line.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(spiderpool_tests::images::default_out_dir);
    match spiderpool_tests::images::build(spiderpool_tests::tools::repo_root(), &out) {
        Ok(built) => {
            for image in &built {
                eprintln!(
                    "{} {} {}",
                    image.reference,
                    image.digest,
                    out.join(&image.archive).display()
                );
            }
            let mut stdout = std::io::stdout().lock();
            let _ = std::io::Write::write_all(&mut stdout, format!("{}\n", out.display()).as_bytes());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("build-images: {err:#}");
            ExitCode::FAILURE
        }
    }
}
