//! Records as the materializer reads them from the log (anything a broker
//! may hold): folding a batch never panics, every record is either folded
//! or set aside as poison, and the facts it produces are a fixed point of
//! their own merge.
#![no_main]

use healthcode_core::Validator;
use healthcode_log::{Delivered, Position, Record};
use healthcode_materializer::fold;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|records: Vec<(Vec<u8>, Vec<u8>)>| {
    let batch: Vec<Delivered> = records
        .into_iter()
        .enumerate()
        .map(|(offset, (key, payload))| Delivered {
            position: Position { partition: 0, offset: offset as u64 },
            record: Record { key, payload },
        })
        .collect();
    let folded = fold(&batch, &Validator::default());
    assert_eq!(folded.events + folded.poison.len(), batch.len(), "every record is folded or poison");
    for update in folded.updates.iter() {
        assert_eq!(update.facts.clone().merged(&update.facts), update.facts, "merge is idempotent");
    }
});
