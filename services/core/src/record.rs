//! The one encoding of events in the event log: a `healthcode.v1.Event`
//! protobuf. The edge encodes, the materializer decodes (as do the fuzz
//! targets); nothing else reads or writes record payloads.

use healthcode_proto::Message;
use healthcode_proto::v1 as pb;

use crate::event::Event;
use crate::validation::{ValidationError, Validator};

/// Why a record's payload is not an event (it is then dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record: not a healthcode.v1.Event: {0}")]
    NotAnEvent(#[from] healthcode_proto::DecodeError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// The payload of `event`'s record.
pub fn encode(event: &Event) -> Vec<u8> {
    pb::Event::from(event).encode_to_vec()
}

/// The event in a record's payload, checked for shape (not for the clock:
/// it was accepted once, perhaps long ago).
pub fn decode(payload: &[u8], validator: &Validator) -> Result<Event, RecordError> {
    let wire = pb::Event::decode(payload)?;
    Ok(validator.decode_record(wire)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventBody, ScanKind};
    use crate::time::UnixMicros;

    #[test]
    fn an_encoded_event_decodes_to_itself_and_garbage_is_refused() {
        let event = Event {
            event_id: "e1".into(),
            resident_id: "r1".into(),
            body: EventBody::Scan {
                station_id: "st".into(),
                site_id: "site".into(),
                kind: ScanKind::VenueEntry,
                scanned_at: UnixMicros(1_800_000_000_000_000),
            },
        };
        let v = Validator::default();
        assert_eq!(decode(&encode(&event), &v), Ok(event));
        assert!(matches!(decode(&[0xff, 0xff], &v), Err(RecordError::NotAnEvent(_))));
        let empty = decode(&[], &v).unwrap_err().to_string();
        assert!(empty.contains("record.kind"), "{empty}");
    }
}
