//! Stream tokens. Positions in this server's event stream are handed out as `s<N>` (sync's
//! `next_batch`) and `t<N>` (pagination); both name the point just after event N, so either can
//! be passed wherever a token is taken. When a sync carries fewer to-device messages than are
//! waiting, its token says how far they went: `s<N>_<M>`, to-device messages up to M.

use crate::api::error::MatrixError;

/// A sync token for position `n`, with to-device messages delivered up to `to_device`.
pub fn sync(n: i64, to_device: i64) -> String {
    if to_device >= n { format!("s{n}") } else { format!("s{n}_{to_device}") }
}

/// A pagination token for position `n`.
pub fn pagination(n: i64) -> String {
    format!("t{}", n.max(0))
}

/// A parsed sync token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    /// The stream position.
    pub position: i64,
    /// To-device messages up to here were delivered.
    pub to_device: i64,
}

/// Parses a sync or pagination token, or `M_INVALID_PARAM`.
pub fn parse(token: &str) -> Result<SyncToken, MatrixError> {
    let invalid = || MatrixError::invalid_param(format!("Invalid token {token:?}"));
    let number = |n: &str| n.parse::<i64>().ok().filter(|n| *n >= 0);
    if let Some(rest) = token.strip_prefix('s') {
        let (position, to_device) = match rest.split_once('_') {
            Some((position, to_device)) => (number(position), number(to_device)),
            None => (number(rest), number(rest)),
        };
        return match (position, to_device) {
            (Some(position), Some(to_device)) if to_device <= position => Ok(SyncToken { position, to_device }),
            _ => Err(invalid()),
        };
    }
    let position = token.strip_prefix('t').and_then(number).ok_or_else(invalid)?;
    Ok(SyncToken { position, to_device: position })
}

/// The position a token names, or `M_INVALID_PARAM`.
pub fn position(token: &str) -> Result<i64, MatrixError> {
    parse(token).map(|t| t.position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        assert_eq!(position(&sync(42, 42)).unwrap(), 42);
        assert_eq!(parse(&sync(42, 40)).unwrap(), SyncToken { position: 42, to_device: 40 });
        assert_eq!(sync(42, 40), "s42_40");
        assert_eq!(position(&pagination(7)).unwrap(), 7);
        assert_eq!(pagination(-1), "t0");
        for bad in ["", "s", "x1", "s-1", "s1.5", "t99999999999999999999", "s4_5", "s4_", "s_4", "t4_3"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
