//! The callback HTTP server: token signing and verification, router, handlers, errors.
