//! The job graph as the user builds it: a [`StreamEnv`] and typed [`Stream`] handles.
//!
//! Building is lazy. Each node keeps a closure that, when the job starts, makes its subtasks:
//! nodes are built in reverse order of creation (consumers before producers), so when a node is
//! built, every consumer has already said how it wants its input: fused into this node's task
//! (a forward edge of equal parallelism into a single-input node), or through channels.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};

use super::chain::{Chain, ChannelOutput, Discard, FanOut, OperatorLink, OperatorMetrics};
use super::clock::ProcessingClock;
use super::config::{validate_parallelism, JobConfig};
use super::element::StreamElement;
use super::error::{Result, RuntimeError};
use super::gate::InputGate;
use super::operator::{Operator, OperatorContext, SubtaskInfo};
use super::partition::Partitioning;
use super::sink::{Sink, SinkLink, SinkStateContext};
use super::source::{run_source, JobEnd, Source, SourceCommand, SourceContext};
use super::task::run_operator;
use crate::checkpoint::{JobFingerprint, NodeFingerprint, Participant, Wiring};
use crate::state::StateBackend;

/// What a record type must be to travel a job: sent between tasks, and cloned when one stream
/// feeds several consumers.
pub trait Data: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Data for T {}

/// What a key must be: hashed to a key group, compared, cloned into state.
pub trait Key: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static {}
impl<K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static> Key for K {}

/// The consumers of one node's output: per consumer, per upstream subtask, the chain the
/// subtask's output goes to. Filled in by the consumers when they are built.
type Port<T> = Arc<Mutex<Vec<Option<Endpoint<T>>>>>;

/// How one consumer takes a node's output: per upstream subtask, the chain to push into (taken
/// out when the subtask is built).
type Endpoint<T> = Vec<Option<Box<dyn Chain<T>>>>;

type BuildFn = Box<dyn FnOnce(&mut BuildContext) -> Result<()> + Send>;

struct Node {
    build: BuildFn,
}

pub(crate) struct Graph {
    pub(crate) config: JobConfig,
    nodes: Vec<Node>,
    pub(crate) metrics: Vec<(String, Arc<OperatorMetrics>)>,
    /// The graph's shape, as checkpoints record it.
    pub(crate) fingerprint: JobFingerprint,
    names: usize,
    started: bool,
}

/// What building the nodes produces: the tasks to spawn and the handles to drive them.
pub(crate) struct BuildContext {
    pub(crate) clock: ProcessingClock,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) tasks: Vec<(String, BoxFuture<'static, Result<()>>)>,
    pub(crate) source_commands: Vec<mpsc::UnboundedSender<SourceCommand>>,
    pub(crate) config: JobConfig,
    pub(crate) job_end: JobEnd,
    /// The checkpoint protocol's wiring, when the job takes checkpoints.
    pub(crate) checkpoint: Option<Wiring>,
}

impl BuildContext {
    /// Who subtask `index` of node `name` is, in this run.
    fn subtask_info(&self, name: &str, index: usize, parallelism: usize) -> SubtaskInfo {
        let mut info = SubtaskInfo::new(name, index, parallelism);
        info.job = self.config.name.clone();
        if let Some(wiring) = &self.checkpoint {
            info.checkpointing = true;
            info.restored_epoch = wiring.restored.as_ref().map(|r| r.epoch);
            info.aborted_epochs = wiring.aborted.clone();
            info.first_epoch = wiring.first_epoch;
        }
        info
    }

    /// Registers a subtask that acknowledges checkpoints.
    fn participant(&mut self, info: &SubtaskInfo, source: bool) -> Option<Participant> {
        let source = source.then(|| info.operator.clone());
        self.checkpoint
            .as_mut()
            .map(|wiring| wiring.participant(info.task_name(), source))
    }
}

/// The environment a job is built in: create sources here, transform the streams they return,
/// end them in sinks, then [`execute`](StreamEnv::execute).
///
/// ```
/// use omstream_core::runtime::{JobConfig, StreamEnv};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let env = StreamEnv::new(JobConfig::named("doubles"));
/// let numbers = env.from_iter("numbers", 1..=5);
/// let collected = numbers.collect();
/// env.execute().await.unwrap();
/// assert_eq!(collected.values(), vec![1, 2, 3, 4, 5]);
/// # });
/// ```
#[derive(Clone)]
pub struct StreamEnv {
    pub(crate) graph: Arc<Mutex<Graph>>,
}

impl fmt::Debug for StreamEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let graph = self.lock();
        f.debug_struct("StreamEnv")
            .field("config", &graph.config)
            .field("nodes", &graph.nodes.len())
            .finish()
    }
}

impl Default for StreamEnv {
    fn default() -> Self {
        Self::new(JobConfig::default())
    }
}

impl StreamEnv {
    /// An empty job with these settings.
    pub fn new(config: JobConfig) -> Self {
        StreamEnv {
            graph: Arc::new(Mutex::new(Graph {
                config,
                nodes: Vec::new(),
                metrics: Vec::new(),
                fingerprint: JobFingerprint::default(),
                names: 0,
                started: false,
            })),
        }
    }

    /// The job's settings.
    pub fn config(&self) -> JobConfig {
        self.lock().config.clone()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Graph> {
        // A panic while holding this lock can only come from a bug in graph building; the
        // graph is then unusable anyway, so poisoning is not recovered from.
        self.graph.lock().expect("job graph lock poisoned")
    }

    /// A unique node name: `base` when unused, else `base#n`.
    fn node_name(&self, base: &str) -> String {
        let mut graph = self.lock();
        graph.names += 1;
        if graph.metrics.iter().any(|(name, _)| name == base) {
            format!("{base}#{}", graph.names)
        } else {
            base.to_string()
        }
    }

    /// Adds a source with the job's default parallelism; `factory` makes each subtask's source.
    pub fn add_source<T: Data>(
        &self,
        name: &str,
        factory: impl Fn(&SubtaskInfo) -> Box<dyn Source<T>> + Send + 'static,
    ) -> Stream<T> {
        let name = self.node_name(name);
        let port: Port<T> = Arc::default();
        let parallelism = Arc::new(AtomicUsize::new(self.lock().config.parallelism));
        let (node_port, node_parallelism, node_name) =
            (port.clone(), parallelism.clone(), name.clone());
        let metrics = Arc::new(OperatorMetrics::default());
        let node_metrics = metrics.clone();
        let build: BuildFn = Box::new(move |ctx: &mut BuildContext| {
            let parallelism = node_parallelism.load(Ordering::Relaxed);
            validate_parallelism(&node_name, parallelism)?;
            let mut outputs = take_outputs(&node_port, &node_name)?;
            for index in 0..parallelism {
                let info = ctx.subtask_info(&node_name, index, parallelism);
                let chain = output_chain(&mut outputs, index);
                let source = factory(&info);
                let (commands, receiver) = mpsc::unbounded_channel();
                ctx.source_commands.push(commands);
                let participant = ctx.participant(&info, true);
                let restored = ctx
                    .checkpoint
                    .as_ref()
                    .and_then(|w| w.restored.as_ref())
                    .map(|record| record.positions_of(&node_name));
                let source_ctx = SourceContext {
                    subtask: info.clone(),
                    clock: ctx.clock,
                    restored,
                };
                let task = run_source(
                    source,
                    chain,
                    source_ctx,
                    receiver,
                    ctx.stop.clone(),
                    node_metrics.clone(),
                    ctx.job_end.clone(),
                    participant,
                );
                ctx.tasks.push((info.task_name(), task.boxed()));
            }
            Ok(())
        });
        self.add_node_with_metrics(&name, build, metrics);
        self.record_node(&name, "source", Vec::new());
        Stream {
            env: self.clone(),
            port,
            parallelism,
            name,
        }
    }

    /// Adds a node to the graph's fingerprint.
    fn record_node(&self, name: &str, kind: &str, inputs: Vec<String>) {
        self.lock().fingerprint.nodes.push(NodeFingerprint {
            name: name.to_string(),
            kind: kind.to_string(),
            inputs,
        });
    }

    /// The shape of the job graph built so far, as checkpoints record it.
    pub fn fingerprint(&self) -> JobFingerprint {
        self.lock().fingerprint.clone()
    }

    /// Adds an operator reading `inputs` (all of one type, each with its partitioning); it gets
    /// the parallelism of the first input. `factory` makes each subtask's operator.
    pub fn add_operator<I: Data, O: Data>(
        &self,
        name: &str,
        inputs: Vec<(&Stream<I>, Partitioning<I>)>,
        factory: impl Fn(&SubtaskInfo) -> Box<dyn Operator<I, O>> + Send + 'static,
    ) -> Stream<O> {
        let name = self.node_name(name);
        let port: Port<O> = Arc::default();
        let default_parallelism = inputs
            .first()
            .map(|(s, _)| s.parallelism())
            .unwrap_or(self.lock().config.parallelism);
        let parallelism = Arc::new(AtomicUsize::new(default_parallelism));
        let inputs: Vec<Input<I>> = inputs.into_iter().map(|(s, p)| s.consume(p)).collect();
        self.record_node(
            &name,
            "operator",
            inputs.iter().map(|i| i.name.clone()).collect(),
        );
        let (node_port, node_parallelism, node_name) =
            (port.clone(), parallelism.clone(), name.clone());
        let metrics = Arc::new(OperatorMetrics::default());
        let node_metrics = metrics.clone();
        let build: BuildFn = Box::new(move |ctx: &mut BuildContext| {
            let parallelism = node_parallelism.load(Ordering::Relaxed);
            validate_parallelism(&node_name, parallelism)?;
            let mut outputs = take_outputs(&node_port, &node_name)?;
            let links = (0..parallelism)
                .map(|index| {
                    let info = ctx.subtask_info(&node_name, index, parallelism);
                    let operator = factory(&info);
                    let participant = ctx.participant(&info, false);
                    let mut op_ctx = OperatorContext::new(info, ctx.clock);
                    op_ctx.set_state_backend(ctx.config.state_backend.clone());
                    op_ctx.set_max_batch(ctx.config.batch_size);
                    let next = output_chain(&mut outputs, index);
                    Box::new(OperatorLink::new(
                        operator,
                        op_ctx,
                        next,
                        node_metrics.clone(),
                        participant,
                    )) as Box<dyn Chain<I>>
                })
                .collect();
            connect_inputs(ctx, &node_name, inputs, links)
        });
        self.add_node_with_metrics(&name, build, metrics);
        Stream {
            env: self.clone(),
            port,
            parallelism,
            name,
        }
    }

    fn add_node_with_metrics(&self, name: &str, build: BuildFn, metrics: Arc<OperatorMetrics>) {
        let mut graph = self.lock();
        graph.metrics.push((name.to_string(), metrics));
        graph.nodes.push(Node { build });
    }

    /// Builds every node; the tasks are returned in the context.
    pub(crate) fn build(
        &self,
        clock: ProcessingClock,
        stop: watch::Receiver<bool>,
        job_end: JobEnd,
        checkpoint: Option<(Wiring, StateBackend)>,
    ) -> Result<BuildContext> {
        let (nodes, config) = {
            let mut graph = self.lock();
            if graph.started {
                return Err(RuntimeError::InvalidJob(format!(
                    "job '{}' was already started; build a new StreamEnv for another run",
                    graph.config.name
                )));
            }
            graph.config.validate()?;
            graph.started = true;
            (std::mem::take(&mut graph.nodes), graph.config.clone())
        };
        if nodes.is_empty() {
            return Err(RuntimeError::InvalidJob(
                "the job has no operators: add a source and a sink".to_string(),
            ));
        }
        let (checkpoint, config) = match checkpoint {
            Some((wiring, backend)) => (
                Some(wiring),
                JobConfig {
                    state_backend: backend,
                    ..config
                },
            ),
            None => (None, config),
        };
        let mut ctx = BuildContext {
            clock,
            stop,
            tasks: Vec::new(),
            source_commands: Vec::new(),
            config,
            job_end,
            checkpoint,
        };
        for node in nodes.into_iter().rev() {
            (node.build)(&mut ctx)?;
        }
        Ok(ctx)
    }
}

/// A typed stream of records: the output of one node. Clone it to feed several consumers.
pub struct Stream<T> {
    env: StreamEnv,
    port: Port<T>,
    parallelism: Arc<AtomicUsize>,
    name: String,
}

impl<T> Clone for Stream<T> {
    fn clone(&self) -> Self {
        Stream {
            env: self.env.clone(),
            port: self.port.clone(),
            parallelism: self.parallelism.clone(),
            name: self.name.clone(),
        }
    }
}

impl<T> fmt::Debug for Stream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.name)
            .field("parallelism", &self.parallelism.load(Ordering::Relaxed))
            .finish()
    }
}

/// One consumer's view of an input, captured when the consumer is added.
pub(crate) struct Input<T> {
    port: Port<T>,
    slot: usize,
    parallelism: Arc<AtomicUsize>,
    partitioning: Partitioning<T>,
    name: String,
}

impl<T: Data> Stream<T> {
    /// The environment the stream belongs to.
    pub fn env(&self) -> &StreamEnv {
        &self.env
    }

    /// The name of the node that produces the stream.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many subtasks produce the stream.
    pub fn parallelism(&self) -> usize {
        self.parallelism.load(Ordering::Relaxed)
    }

    /// Sets how many subtasks produce the stream (between 1 and 128; checked when the job
    /// starts). Operators added after this one inherit it.
    pub fn with_parallelism(self, parallelism: usize) -> Self {
        self.parallelism.store(parallelism, Ordering::Relaxed);
        self
    }

    fn consume(&self, partitioning: Partitioning<T>) -> Input<T> {
        let mut consumers = self.port.lock().expect("port lock poisoned");
        consumers.push(None);
        Input {
            port: self.port.clone(),
            slot: consumers.len() - 1,
            parallelism: self.parallelism.clone(),
            partitioning,
            name: self.name.clone(),
        }
    }

    /// Adds a single-input operator after this stream.
    pub fn transform<O: Data>(
        &self,
        name: &str,
        partitioning: Partitioning<T>,
        factory: impl Fn(&SubtaskInfo) -> Box<dyn Operator<T, O>> + Send + 'static,
    ) -> Stream<O> {
        self.env
            .add_operator(name, vec![(self, partitioning)], factory)
    }

    /// Ends the stream in a sink with the stream's parallelism (fused into its task).
    pub fn sink(
        &self,
        name: &str,
        factory: impl Fn(&SubtaskInfo) -> Box<dyn Sink<T>> + Send + 'static,
    ) {
        self.sink_with(name, Partitioning::Forward, None, factory)
    }

    /// Ends the stream in a sink with its own partitioning and parallelism.
    pub fn sink_with(
        &self,
        name: &str,
        partitioning: Partitioning<T>,
        parallelism: Option<usize>,
        factory: impl Fn(&SubtaskInfo) -> Box<dyn Sink<T>> + Send + 'static,
    ) {
        let name = self.env.node_name(name);
        let input = self.consume(partitioning);
        self.env
            .record_node(&name, "sink", vec![input.name.clone()]);
        let sink_parallelism = parallelism.map(|p| Arc::new(AtomicUsize::new(p)));
        let metrics = Arc::new(OperatorMetrics::default());
        let node_metrics = metrics.clone();
        let node_name = name.clone();
        let build: BuildFn = Box::new(move |ctx: &mut BuildContext| {
            let parallelism = sink_parallelism
                .as_ref()
                .unwrap_or(&input.parallelism)
                .load(Ordering::Relaxed);
            validate_parallelism(&node_name, parallelism)?;
            let links = (0..parallelism)
                .map(|index| {
                    let info = ctx.subtask_info(&node_name, index, parallelism);
                    let sink = factory(&info);
                    let participant = ctx.participant(&info, false);
                    let states = SinkStateContext::new(
                        info.clone(),
                        ctx.config.state_backend.clone(),
                        ctx.clock,
                    );
                    Box::new(SinkLink::new(
                        sink,
                        info,
                        node_metrics.clone(),
                        participant,
                        states,
                    )) as Box<dyn Chain<T>>
                })
                .collect();
            connect_inputs(ctx, &node_name, vec![input], links)
        });
        self.env.add_node_with_metrics(&name, build, metrics);
    }

    /// Keys the stream: records with equal keys go to the same subtask of keyed operators.
    pub fn key_by<K: Key>(
        &self,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> KeyedStream<K, T> {
        KeyedStream {
            stream: self.clone(),
            key: Arc::new(key),
        }
    }
}

/// A stream with a key per record. Keyed operators hash-partition it, so each key is handled
/// by one subtask, and keep their state and timers per key.
pub struct KeyedStream<K, T> {
    stream: Stream<T>,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<K, T> Clone for KeyedStream<K, T> {
    fn clone(&self) -> Self {
        KeyedStream {
            stream: self.stream.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K, T> fmt::Debug for KeyedStream<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedStream")
            .field("stream", &self.stream)
            .finish()
    }
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// The stream underneath.
    pub fn stream(&self) -> &Stream<T> {
        &self.stream
    }

    /// The key of a record.
    pub fn key_of(&self, record: &T) -> K {
        (self.key)(record)
    }

    /// The key extractor, for operators that need the key of each record.
    pub fn key_fn(&self) -> Arc<dyn Fn(&T) -> K + Send + Sync> {
        self.key.clone()
    }

    /// The hash partitioning on the key.
    pub fn partitioning(&self) -> Partitioning<T> {
        let key = self.key.clone();
        Partitioning::hash_by(move |record| key(record))
    }

    /// Adds a keyed operator: its input is hash-partitioned on the key.
    pub fn transform<O: Data>(
        &self,
        name: &str,
        factory: impl Fn(&SubtaskInfo) -> Box<dyn Operator<T, O>> + Send + 'static,
    ) -> Stream<O> {
        self.stream.transform(name, self.partitioning(), factory)
    }
}

fn take_outputs<T>(port: &Port<T>, node: &str) -> Result<Vec<Endpoint<T>>> {
    let consumers = std::mem::take(&mut *port.lock().expect("port lock poisoned"));
    consumers
        .into_iter()
        .map(|c| {
            c.ok_or_else(|| {
                RuntimeError::InvalidJob(format!(
                    "a consumer of '{node}' was not built (it belongs to another StreamEnv?)"
                ))
            })
        })
        .collect()
}

/// The chain subtask `index` of a node sends its output to.
fn output_chain<T: Data>(outputs: &mut [Endpoint<T>], index: usize) -> Box<dyn Chain<T>> {
    let mut chains: Vec<Box<dyn Chain<T>>> = outputs
        .iter_mut()
        .filter_map(|per_subtask| per_subtask.get_mut(index).and_then(Option::take))
        .collect();
    match chains.len() {
        0 => Box::new(Discard),
        1 => chains.pop().expect("one chain"),
        _ => Box::new(FanOut { outputs: chains }),
    }
}

/// Wires a consumer node's subtasks (`links`) to its inputs: fused into the producer's tasks
/// when possible, else through bounded channels and one task per subtask.
fn connect_inputs<I: Data>(
    ctx: &mut BuildContext,
    node: &str,
    inputs: Vec<Input<I>>,
    links: Vec<Box<dyn Chain<I>>>,
) -> Result<()> {
    let parallelism = links.len();
    if let [input] = inputs.as_slice() {
        let upstream = input.parallelism.load(Ordering::Relaxed);
        let fusable =
            upstream == parallelism && (input.partitioning.is_forward() || parallelism == 1);
        if fusable {
            let mut consumers = input.port.lock().expect("port lock poisoned");
            consumers[input.slot] = Some(links.into_iter().map(Some).collect());
            return Ok(());
        }
    }
    let mut receivers: Vec<Vec<mpsc::Receiver<StreamElement<I>>>> =
        (0..parallelism).map(|_| Vec::new()).collect();
    for input in inputs {
        let upstream = input.parallelism.load(Ordering::Relaxed);
        let one_to_one = input.partitioning.is_forward() && upstream == parallelism;
        let partitioning = if input.partitioning.is_forward() && !one_to_one {
            Partitioning::Rebalance
        } else {
            input.partitioning.clone()
        };
        let endpoint = (0..upstream)
            .map(|up| {
                let targets: Vec<usize> = if one_to_one {
                    vec![up]
                } else {
                    (0..parallelism).collect()
                };
                let senders = targets
                    .into_iter()
                    .map(|target| {
                        let (tx, rx) = mpsc::channel(ctx.config.channel_capacity);
                        receivers[target].push(rx);
                        tx
                    })
                    .collect();
                let task = format!("{}[{up}] -> {node}", input.name);
                Some(
                    Box::new(ChannelOutput::new(senders, partitioning.clone(), up, task))
                        as Box<dyn Chain<I>>,
                )
            })
            .collect();
        input.port.lock().expect("port lock poisoned")[input.slot] = Some(endpoint);
    }
    for (index, (link, receivers)) in links.into_iter().zip(receivers).enumerate() {
        let task = format!("{node}[{index}/{parallelism}]");
        let gate = InputGate::new(receivers);
        let observer = ctx.checkpoint.as_ref().map(Wiring::observer);
        let future = run_operator(gate, link, ctx.clock, task.clone(), observer);
        ctx.tasks.push((task, future.boxed()));
    }
    Ok(())
}
