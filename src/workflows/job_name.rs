//! How a v3 job is routed back to its request. A v3 webhook is configured per workflow, not
//! per request, and its payload names the job (`job_uid`) but no request. What it does carry
//! is the `job_name` the bridge chose when it launched the job: the bridge appends a signed
//! callback token (the same tokens as v4 callback URLs: request id and chunk, HMAC-SHA256
//! under a rotating key) as ` [cb:<token>]`. The webhook endpoint reads the token back,
//! verifies it, and writes the webhook to the partition of that request, where its owner
//! checks that the `job_uid` is the job it recorded for the chunk.

/// What opens the token inside a job name.
const OPEN: &str = " [cb:";
/// The name shown in the Captain Data app when the request gave none.
pub const DEFAULT_JOB_NAME: &str = "captain-bridge";

/// Why a job name could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the job name with its routing token is {len} characters, above v3.max_job_name_len ({max})"
)]
pub struct JobNameTooLong {
    pub len: usize,
    pub max: usize,
}

/// The job name sent to the v3 API: the request's `job_name` (or [`DEFAULT_JOB_NAME`]) and the
/// token.
pub fn compose(name: Option<&str>, token: &str, max: usize) -> Result<String, JobNameTooLong> {
    let composed = format!("{}{OPEN}{token}]", name.unwrap_or(DEFAULT_JOB_NAME));
    let len = composed.chars().count();
    if len > max {
        return Err(JobNameTooLong { len, max });
    }
    Ok(composed)
}

/// The token a job name carries, if any (the last ` [cb:...]` at its end).
pub fn token_of(job_name: &str) -> Option<&str> {
    let start = job_name.rfind(OPEN)? + OPEN.len();
    let token = job_name[start..].strip_suffix(']')?;
    (!token.is_empty() && !token.contains([' ', ']', '['])).then_some(token)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_back_from_the_name_it_was_put_in() {
        let name = compose(Some("Nightly [cb:fake] run"), "v1.k.abc.def", 255).unwrap();
        assert_eq!(name, "Nightly [cb:fake] run [cb:v1.k.abc.def]");
        assert_eq!(token_of(&name), Some("v1.k.abc.def"));
        let default = compose(None, "t", 255).unwrap();
        assert_eq!(default, "captain-bridge [cb:t]");
    }

    #[test]
    fn names_without_a_token_have_none() {
        for name in ["Automated Run", "x [cb:]", "x [cb:a b]", "x [cb:abc", ""] {
            assert_eq!(token_of(name), None, "{name:?}");
        }
    }

    #[test]
    fn a_name_beyond_the_limit_is_refused_with_its_length() {
        let err = compose(Some("n"), &"t".repeat(300), 255).unwrap_err();
        assert_eq!(err.max, 255);
        assert!(err.len > 255);
    }
}
