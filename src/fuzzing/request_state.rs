//! `request_state`: sealing and opening the `requestState` of parked calls.

use crate::approval::request_state::{RequestState, StateError, open, seal};

/// Input: 8 bytes of expiry, 4 bytes that pick a tampering (position, byte), then
/// `key \n agent \n digest \n candidate` (lossy UTF-8). Properties:
/// - a sealed state opens, for the same key, agent, digest and an earlier time, to the
///   same state; later, for another agent, another call or another key it does not;
/// - a sealed state changed in any way never opens;
/// - a candidate string opens only if it is exactly what sealing its state gives.
pub fn request_state(data: &[u8]) {
    let Some((exp, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let Some((tamper, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let exp = u64::from_le_bytes(*exp).max(1);
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(4, '\n');
    let key = parts.next().unwrap_or_default().as_bytes();
    let sub = parts.next().unwrap_or_default();
    let dig = parts.next().unwrap_or_default();
    let candidate = parts.next().unwrap_or_default();
    let state = RequestState {
        sub: sub.to_string(),
        dig: dig.to_string(),
        exp,
    };
    let sealed = seal(key, &state);
    let now = exp - 1;
    assert_eq!(open(key, &sealed, sub, dig, now), Ok(state.clone()));
    assert_eq!(open(key, &sealed, sub, dig, exp), Err(StateError::Expired));
    assert_eq!(
        open(key, &sealed, &format!("{sub}x"), dig, now),
        Err(StateError::WrongPrincipal)
    );
    assert_eq!(
        open(key, &sealed, sub, &format!("{dig}x"), now),
        Err(StateError::WrongCall)
    );
    let other_key = [key, &b"x"[..]].concat();
    assert_eq!(
        open(&other_key, &sealed, sub, dig, now),
        Err(StateError::BadMac)
    );

    // One byte changed, inserted or removed, anywhere.
    let position = usize::from(u16::from_le_bytes([tamper[0], tamper[1]])) % (sealed.len() + 1);
    let byte = tamper[2];
    let mut changed = sealed.clone().into_bytes();
    match tamper[3] % 3 {
        0 if position < changed.len() => changed[position] = byte,
        1 => changed.insert(position, byte),
        _ if position < changed.len() => {
            changed.remove(position);
        }
        _ => changed.push(byte),
    }
    if let Ok(changed) = String::from_utf8(changed)
        && changed != sealed
    {
        assert!(
            open(key, &changed, sub, dig, now).is_err(),
            "a tampered requestState opened: {changed:?}"
        );
    }

    if let Ok(opened) = open(key, candidate, sub, dig, now) {
        assert_eq!(seal(key, &opened), candidate, "a second spelling opened");
    }
}
