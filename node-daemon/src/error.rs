//! Why a request or a pool change failed. Each request error maps to the CNI error code the plugin
//! reports and to upstream's metric label; API errors are kept as the source.

use spiderpool_agent_api::codes;

use crate::api::ApiError;
use crate::ipam::annotations::AnnotationError;
use crate::ipam::candidates::CandidateError;

/// Why a pool change could not be made ([`crate::writer`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The pool does not exist (any more).
    #[error("SpiderIPPool {0} does not exist")]
    PoolGone(String),
    /// The pool's spec cannot be used.
    #[error("SpiderIPPool {pool} is unusable: {reason}")]
    BadPool {
        /// Pool name.
        pool: String,
        /// What is wrong.
        reason: String,
    },
    /// The request's deadline passed before a write succeeded.
    #[error("SpiderIPPool {pool}: could not write the pool status before the deadline: {last_error}")]
    Timeout {
        /// Pool name.
        pool: String,
        /// The last error seen.
        last_error: String,
        /// The request was decided and waited for other nodes' reservations
        /// ([`crate::ipam::pick::Outcome::Wait`]), rather than failing to write.
        waited_for_reservations: bool,
    },
    /// The API server refused the pool read or write for a reason retrying will not change (a 4xx
    /// such as 403 or 422, [`crate::api::ApiError::is_permanent`]).
    #[error("SpiderIPPool {pool}: the API server refused: {error}")]
    Refused {
        /// Pool name.
        pool: String,
        /// What it said.
        error: String,
    },
    /// The writer task is gone (daemon shutting down).
    #[error("the writer of SpiderIPPool {0} stopped")]
    Stopped(String),
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Missing or contradictory request fields.
    #[error("{0}")]
    BadRequest(String),
    /// The pod cannot get addresses.
    #[error("{0}")]
    PodNotAlive(String),
    /// A malformed pod or namespace annotation.
    #[error("{0}")]
    Annotation(#[from] AnnotationError),
    /// No pool can serve the interface.
    #[error("{0}")]
    NoCandidate(String),
    /// Every candidate pool is full.
    #[error("{0}")]
    Exhausted(String),
    /// Retained addresses may not be released this way.
    #[error("{0}")]
    Forbidden(String),
    /// An API call failed.
    #[error("{action}: {source}")]
    Api {
        /// What the call was for.
        action: &'static str,
        /// The failure.
        #[source]
        source: ApiError,
    },
    /// A pool write did not succeed before the request's deadline.
    #[error(transparent)]
    PoolWrite(WriteError),
    /// Something the request waits for did not happen in time; worth retrying.
    #[error("{0}")]
    Timeout(String),
}

impl IpamError {
    /// An API call for `action` failed.
    pub fn api(action: &'static str) -> impl FnOnce(ApiError) -> IpamError {
        move |source| IpamError::Api { action, source }
    }

    /// The CNI error code for the plugin.
    pub fn code(&self) -> u32 {
        match self {
            IpamError::BadRequest(_) => codes::INVALID_ENVIRONMENT,
            IpamError::PodNotAlive(_) => codes::POD_NOT_ALIVE,
            IpamError::Annotation(_) => codes::INVALID_POD_ANNOTATION,
            IpamError::NoCandidate(_) => codes::NO_CANDIDATE_POOL,
            IpamError::Exhausted(_) => codes::POOLS_EXHAUSTED,
            IpamError::Forbidden(_) => codes::RELEASE_FORBIDDEN,
            IpamError::Api { source, .. } if source.is_permanent() => codes::INTERNAL,
            IpamError::PoolWrite(WriteError::Refused { .. }) => codes::INTERNAL,
            IpamError::Api { .. } | IpamError::PoolWrite(_) | IpamError::Timeout(_) => codes::TRY_AGAIN_LATER,
        }
    }

    /// Every value [`IpamError::reason`] can take.
    pub const REASONS: [&'static str; 7] = [
        "wrong_input",
        "pod_not_alive",
        "no_available_pool",
        "ip_used_out",
        "forbidden",
        "internal",
        "retries_exhausted",
    ];

    /// Metric label (upstream's classification, reference section 9).
    pub fn reason(&self) -> &'static str {
        match self {
            IpamError::BadRequest(_) | IpamError::Annotation(_) => "wrong_input",
            IpamError::PodNotAlive(_) => "pod_not_alive",
            IpamError::NoCandidate(_) => "no_available_pool",
            IpamError::Exhausted(_) => "ip_used_out",
            IpamError::Forbidden(_) => "forbidden",
            IpamError::Api { source, .. } if source.is_permanent() => "internal",
            IpamError::PoolWrite(WriteError::Refused { .. }) => "internal",
            IpamError::Api { .. } | IpamError::PoolWrite(_) | IpamError::Timeout(_) => "retries_exhausted",
        }
    }
}

impl From<CandidateError> for IpamError {
    fn from(e: CandidateError) -> Self {
        match e {
            CandidateError::Annotation(a) => IpamError::Annotation(a),
            CandidateError::NoRule => IpamError::NoCandidate(e.to_string()),
        }
    }
}
