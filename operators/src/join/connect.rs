//! Connecting two keyed streams into one keyed two-input node.

use std::marker::PhantomData;
use std::sync::Arc;

use omstream_core::runtime::{
    stable_hash, Batch, Data, Key, KeyedStream, Operator, OperatorContext, OperatorResult,
    Partitioning, Record, Stream, SubtaskInfo,
};

use super::either::Either;

/// A key extractor, as [`KeyedStream::key_fn`] returns it.
pub(crate) type KeyFn<T, K> = Arc<dyn Fn(&T) -> K + Send + Sync>;

/// Adds a node `name` reading `left` and `right`, both hash-partitioned on their keys (equal
/// keys of the two sides meet in one subtask). Each side is tagged into [`Either`] by a
/// forward map fused into its producer's task. The node gets the left input's parallelism.
pub(crate) fn connect_keyed<K: Key, L: Data, R: Data, O: Data>(
    name: &str,
    left: &KeyedStream<K, L>,
    right: &KeyedStream<K, R>,
    factory: impl Fn(&SubtaskInfo) -> Box<dyn Operator<Either<L, R>, O>> + Send + 'static,
) -> Stream<O> {
    let left_tagged = tag(&format!("{name}-left"), left.stream(), Either::Left);
    let right_tagged = tag(&format!("{name}-right"), right.stream(), Either::Right);
    let (left_key, right_key) = (left.key_fn(), right.key_fn());
    // The same hash for equal keys, whichever side a record comes from.
    let hash: Partitioning<Either<L, R>> = Partitioning::Hash(Arc::new(move |e| match e {
        Either::Left(l) => stable_hash(&left_key(l)),
        Either::Right(r) => stable_hash(&right_key(r)),
    }));
    left.stream().env().add_operator(
        name,
        vec![(&left_tagged, hash.clone()), (&right_tagged, hash)],
        factory,
    )
}

fn tag<T: Data, U: Data>(name: &str, stream: &Stream<T>, tag: fn(T) -> U) -> Stream<U> {
    stream.transform(name, Partitioning::Forward, move |_: &SubtaskInfo| {
        Box::new(Tag {
            tag,
            input: PhantomData,
        }) as Box<dyn Operator<T, U>>
    })
}

struct Tag<T, U> {
    tag: fn(T) -> U,
    input: PhantomData<fn(T)>,
}

impl<T: Data, U: Data> Operator<T, U> for Tag<T, U> {
    fn process_batch(&mut self, batch: Batch<T>, ctx: &mut OperatorContext<U>) -> OperatorResult {
        let tag = self.tag;
        ctx.emit_batch(
            batch
                .into_iter()
                .map(|r| Record::new(r.timestamp, tag(r.value)))
                .collect(),
        );
        Ok(())
    }
}
