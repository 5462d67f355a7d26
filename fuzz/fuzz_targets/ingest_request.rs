//! Bytes as they arrive in a SubmitBatch (or unary) call: decoding never
//! panics, validation never panics, and whatever validation accepts survives
//! the trip back to the wire and is accepted again as the same event.
#![no_main]

use healthcode_core::{EventPath, UnixMicros, Validator};
use healthcode_proto::Message;
use healthcode_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;

/// A fixed clock: the same input always takes the same path.
const NOW: UnixMicros = UnixMicros(1_800_000_000_000_000);

fn check(validator: &Validator, event: &pb::Event, at: EventPath<'_>) {
    if let Ok(accepted) = validator.validate(event.clone(), at, NOW) {
        let again = validator.validate(pb::Event::from(&accepted), at, NOW).expect("an accepted event stays valid");
        assert_eq!(again, accepted, "the wire round trip changes nothing");
    }
}

fuzz_target!(|data: &[u8]| {
    let validator = Validator::default();
    if let Ok(batch) = pb::SubmitBatchRequest::decode(data) {
        for (i, event) in batch.events.iter().enumerate() {
            check(&validator, event, EventPath::indexed("events", i));
        }
    }
    if let Ok(event) = pb::Event::decode(data) {
        let _ = validator.validate_single(event.clone(), EventPath::single("event"), NOW);
        check(&validator, &event, EventPath::single("event"));
    }
});
