//! The Captain Data v4 API client: wire types, error classification, retries.
