//! Admission: what this bridge serves, applied to a validated launch request before it is
//! forwarded to its owner. It resolves `auto` to `live` or `async`, refuses live requests
//! above `live.max_inputs` and modes that need callbacks on a bridge without a callback
//! listener, and checks the one parameter the bridge itself reads (`max_results`, the cap of
//! a live input's paging). A decision of configuration, not of state: the launch router
//! applies it, so the requests topic only ever carries `async`, `schedule` and `live`.

use super::request::{reject, LaunchRequest, Mode, RejectClass, Rejection};

/// What the bridge is configured to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// A callback listener runs (`callbacks.enabled`): async and schedule can be served.
    pub callbacks: bool,
    /// Most inputs of one live request (`live.max_inputs`).
    pub live_max_inputs: usize,
    /// `auto` runs live at or under this many inputs (`live.auto_max_inputs`).
    pub auto_max_inputs: usize,
}

impl Admission {
    /// Admits `request` (with `auto` resolved) or says why not.
    pub fn admit(&self, mut request: LaunchRequest) -> Result<LaunchRequest, Rejection> {
        let inputs = request.inputs.len();
        if request.mode == Mode::Auto {
            request.mode = if inputs <= self.auto_max_inputs || !self.callbacks {
                Mode::Live
            } else {
                Mode::Async
            };
        }
        if request.mode.needs_callbacks() && !self.callbacks {
            return Err(reject(
                RejectClass::ModeUnavailable,
                format!(
                    "mode {:?} needs callbacks and this bridge has no callback listener \
                     (callbacks.enabled = false): it serves mode \"live\" only",
                    request.mode.as_str()
                ),
            ));
        }
        if request.mode == Mode::Live {
            if inputs > self.live_max_inputs {
                let instead = if self.callbacks {
                    "send it with mode \"async\", or split it"
                } else {
                    "split it"
                };
                return Err(reject(
                    RejectClass::TooManyInputs,
                    format!(
                        "a live request takes at most {} inputs (live.max_inputs), this one has \
                         {inputs}: {instead}",
                        self.live_max_inputs
                    ),
                ));
            }
            live_max_results(&request)?;
        }
        Ok(request)
    }
}

/// `parameters.max_results` of a live request: the bridge's cap on each input's results (the
/// live API has no such parameter; the bridge stops paging there). A non-negative integer.
pub fn live_max_results(request: &LaunchRequest) -> Result<Option<u64>, Rejection> {
    let Some(value) = request
        .parameters
        .as_ref()
        .and_then(|p| p.get("max_results"))
    else {
        return Ok(None);
    };
    if value.is_null() {
        return Ok(None);
    }
    value.as_u64().map(Some).ok_or_else(|| {
        reject(
            RejectClass::InvalidValue,
            format!("parameters.max_results must be a non-negative integer, not {value}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::parse_json;
    use serde_json::{json, Value};

    fn request(mode: &str, inputs: usize, parameters: Value) -> LaunchRequest {
        let mut raw = json!({
            "request_id": "r", "action": "linkedin-search-people", "mode": mode,
            "inputs": (0..inputs).map(|i| json!({"linkedin_people_search_url": format!("u{i}")}))
                .collect::<Vec<_>>(),
            "parameters": parameters,
        });
        if mode == "schedule" {
            raw["schedule"] = json!({"cron": "0 8 * * 1"});
        }
        parse_json(raw.to_string().as_bytes(), "x").unwrap()
    }

    const FULL: Admission = Admission {
        callbacks: true,
        live_max_inputs: 10,
        auto_max_inputs: 3,
    };
    const LIVE_ONLY: Admission = Admission {
        callbacks: false,
        ..FULL
    };

    /// (what, bridge, mode, inputs, parameters, admitted mode or rejection class)
    type Case = (
        &'static str,
        Admission,
        &'static str,
        usize,
        Value,
        Result<Mode, RejectClass>,
    );

    #[test]
    fn admission_resolves_auto_and_refuses_what_the_bridge_cannot_serve() {
        use Mode::*;
        use RejectClass::*;
        let none = json!({});
        // (what, bridge, mode, inputs, parameters, admitted mode or rejection class)
        let cases: [Case; 15] = [
            ("async as asked", FULL, "async", 50, none.clone(), Ok(Async)),
            (
                "schedule as asked",
                FULL,
                "schedule",
                1,
                none.clone(),
                Ok(Schedule),
            ),
            (
                "live within the limit",
                FULL,
                "live",
                10,
                none.clone(),
                Ok(Live),
            ),
            (
                "live above the limit",
                FULL,
                "live",
                11,
                none.clone(),
                Err(TooManyInputs),
            ),
            (
                "auto at the threshold is live",
                FULL,
                "auto",
                3,
                none.clone(),
                Ok(Live),
            ),
            (
                "auto above it is async",
                FULL,
                "auto",
                4,
                none.clone(),
                Ok(Async),
            ),
            (
                "auto far above it is async",
                FULL,
                "auto",
                500,
                none.clone(),
                Ok(Async),
            ),
            (
                "async without callbacks",
                LIVE_ONLY,
                "async",
                1,
                none.clone(),
                Err(ModeUnavailable),
            ),
            (
                "schedule without callbacks",
                LIVE_ONLY,
                "schedule",
                1,
                none.clone(),
                Err(ModeUnavailable),
            ),
            (
                "live without callbacks",
                LIVE_ONLY,
                "live",
                2,
                none.clone(),
                Ok(Live),
            ),
            (
                "auto without callbacks is live",
                LIVE_ONLY,
                "auto",
                8,
                none.clone(),
                Ok(Live),
            ),
            (
                "auto without callbacks, too big",
                LIVE_ONLY,
                "auto",
                11,
                none.clone(),
                Err(TooManyInputs),
            ),
            (
                "live with max_results",
                FULL,
                "live",
                1,
                json!({"max_results": 25}),
                Ok(Live),
            ),
            (
                "live with a bad max_results",
                FULL,
                "live",
                1,
                json!({"max_results": -1}),
                Err(InvalidValue),
            ),
            (
                "async leaves max_results to the API",
                FULL,
                "async",
                1,
                json!({"max_results": "x"}),
                Ok(Async),
            ),
        ];
        for (what, bridge, mode, inputs, parameters, expected) in cases {
            let got = bridge
                .admit(request(mode, inputs, parameters))
                .map(|r| r.mode)
                .map_err(|e| e.class);
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn a_refusal_says_what_to_do_instead() {
        let too_big = FULL.admit(request("live", 11, json!({}))).unwrap_err();
        assert!(
            too_big.message.contains("live.max_inputs") && too_big.message.contains("async"),
            "{}",
            too_big.message
        );
        let no_listener = LIVE_ONLY.admit(request("async", 1, json!({}))).unwrap_err();
        assert!(
            no_listener.message.contains("callbacks.enabled = false"),
            "{}",
            no_listener.message
        );
    }

    #[test]
    fn max_results_is_read_as_the_live_cap() {
        assert_eq!(
            live_max_results(&request("live", 1, json!({"max_results": 25}))).unwrap(),
            Some(25)
        );
        assert_eq!(
            live_max_results(&request("live", 1, json!({"max_results": null}))).unwrap(),
            None
        );
        assert_eq!(
            live_max_results(&request("live", 1, json!({}))).unwrap(),
            None
        );
    }
}
