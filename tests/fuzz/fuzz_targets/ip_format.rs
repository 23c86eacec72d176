#![no_main]
use libfuzzer_sys::fuzz_target;
fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = spiderpool_ipmath::parse_ip(text);
        let _ = spiderpool_ipmath::IpRange::parse(text);
    }
});
