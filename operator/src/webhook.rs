//! Admission webhooks served over TLS. Work in progress.
