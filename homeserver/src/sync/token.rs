//! Stream tokens. Positions in this server's event stream are handed out as `s<N>` (sync's
//! `next_batch`) and `t<N>` (pagination); both name the point just after event N, so either can
//! be passed wherever a token is taken.

use crate::api::error::MatrixError;

/// A sync token for position `n`.
pub fn sync(n: i64) -> String {
    format!("s{n}")
}

/// A pagination token for position `n`.
pub fn pagination(n: i64) -> String {
    format!("t{}", n.max(0))
}

/// The position a token names, or `M_INVALID_PARAM`.
pub fn position(token: &str) -> Result<i64, MatrixError> {
    token
        .strip_prefix('s')
        .or_else(|| token.strip_prefix('t'))
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| MatrixError::invalid_param(format!("Invalid token {token:?}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        assert_eq!(super::position(&super::sync(42)).unwrap(), 42);
        assert_eq!(super::position(&super::pagination(7)).unwrap(), 7);
        assert_eq!(super::pagination(-1), "t0");
        for bad in ["", "s", "x1", "s-1", "s1.5", "t99999999999999999999"] {
            assert!(super::position(bad).is_err(), "{bad}");
        }
    }
}
