//! The API client of the commands that read the cluster (`status`, `diff`), configured as kubectl
//! configures itself: `--kubeconfig FILE`, else `$KUBECONFIG`, `~/.kube/config`, or the pod's service
//! account in a cluster.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig given with `--kubeconfig` could not be read.
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No usable client configuration (no `--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`, or
    /// in-cluster service account).
    #[error("finding a kubeconfig ($KUBECONFIG, ~/.kube/config or in-cluster): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the API client: {0}")]
    Client(#[source] kube::Error),
}

/// A client from `kubeconfig`, or from the configuration kubectl would infer.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ConnectError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| ConnectError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => Config::infer().await.map_err(ConnectError::Infer)?,
    };
    Client::try_from(config).map_err(ConnectError::Client)
}
