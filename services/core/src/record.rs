//! The one encoding of events in the event log: a `healthcode.v1.Event`
//! protobuf. The edge encodes, the materializer decodes (as do the fuzz
//! targets); nothing else reads or writes record payloads.

use healthcode_proto::Message;
use healthcode_proto::v1 as pb;

use crate::audit::{Credential, Provenance};
use crate::event::Event;
use crate::time::UnixMicros;
use crate::validation::{ValidationError, Validator};

/// Why a record's payload is not an event (it is then dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record: not a healthcode.v1.Event: {0}")]
    NotAnEvent(#[from] healthcode_proto::DecodeError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// The payload of `event`'s record, stamped with who had it accepted.
pub fn encode(event: &Event, by: &Provenance) -> Vec<u8> {
    let mut wire = pb::Event::from(event);
    wire.provenance = Some(pb::Provenance {
        principal: by.principal.clone(),
        credential: pb::Credential::from(by.credential) as i32,
        accepted_at: Some(by.accepted_at.to_timestamp()),
    });
    wire.encode_to_vec()
}

/// The event in a record's payload, checked for shape (not for the clock:
/// it was accepted once, perhaps long ago), and who had it accepted when
/// the record says (records written before provenance was stamped do not).
pub fn decode(payload: &[u8], validator: &Validator) -> Result<(Event, Option<Provenance>), RecordError> {
    let mut wire = pb::Event::decode(payload)?;
    let by = wire.provenance.take().and_then(|p| {
        let credential = Credential::try_from(pb::Credential::try_from(p.credential).ok()?).ok()?;
        let accepted_at = p.accepted_at.as_ref().and_then(UnixMicros::from_timestamp).unwrap_or(UnixMicros(0));
        Some(Provenance { principal: p.principal, credential, accepted_at })
    });
    Ok((validator.decode_record(wire)?, by))
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
        let by = Provenance {
            principal: "st-1".into(),
            credential: Credential::ClientCertificate,
            accepted_at: UnixMicros(1_800_000_000_000_001),
        };
        assert_eq!(decode(&encode(&event, &by), &v), Ok((event.clone(), Some(by))));
        // A record from before provenance was stamped still decodes.
        let unstamped = pb::Event::from(&event).encode_to_vec();
        assert_eq!(decode(&unstamped, &v), Ok((event, None)));
        assert!(matches!(decode(&[0xff, 0xff], &v), Err(RecordError::NotAnEvent(_))));
        let empty = decode(&[], &v).unwrap_err().to_string();
        assert!(empty.contains("record.kind"), "{empty}");
    }
}
