#!/usr/bin/env node
'use strict';

// Drive ali-ons' own Producer and push Consumer (unmodified, the npm package pinned in
// package.json) against a RocketMQ name server + broker: the interop tests' driver.
//
//   node ons_broker_client.js produce --namesrv HOST:PORT --topic T [--group G]
//        [--send-timeout-ms 3000] [--timeout-ms 30000]                 < messages.jsonl
//   node ons_broker_client.js consume --namesrv HOST:PORT --group G --topic T
//        [--expression '*'] [--count N] [--timeout-ms 30000] [--linger-ms 0]
//        [--fail-prefix P] [--fail-mode retry|throw] [--from last|first|timestamp]
//        [--rebalance-ms 10000] [--stdin-stop] [--verbose]
//
// The name server is given directly (ali-ons' `nameSrv` option): ali-ons' HTTP lookup of
// name server addresses (`onsAddr`) is never used; its required `httpclient` is a stub that
// fails if called.
//
// produce: one JSON object per stdin line,
//   {"body": "utf-8 text"} or {"bodyBase64": "..."}, "tags": "TagA",
//   "keys": ["k1", "k2"] (or "k1 k2"), "properties": {"k": "v"}, "delayLevel": 2
// and one output line per send result:
//   {"kind":"sent","index":i,"topic":T,"msgId":..,"queueId":..,"queueOffset":..,
//    "status":"SEND_OK","brokerName":..}
// The first failed send ends the run (status 1), and so does --timeout-ms passing.
//
// consume: {"kind":"started",...} once the consumer is up; {"kind":"rebalance","topic":..,
// "queueIds":[..]} whenever the queues it holds of a topic change; one line per delivery:
//   {"kind":"message","action":"ok"|"retry"|"throw","topic","tags","keys","properties",
//    "body","bodyBase64","queueId","queueOffset","reconsumeTimes","msgId","bornTimestamp",
//    "storeTimestamp","bornHost","storeHost","commitLogOffset","sysFlag","flag","storeSize",
//    "receivedAt"}                     (receivedAt: Date.now() when the handler was called)
// and {"kind":"closed","consumed":n,"deliveries":m} after consumer.close(), which commits
// the offsets (UPDATE_CONSUMER_OFFSET) and unregisters. "consumed" counts "ok" deliveries.
// "topic" is the original topic also for retried messages (ali-ons renames them back);
// "properties" is every property ali-ons decoded, less its placeholder TAGS:null and the
// empty name a trailing \u0002 yields; MIN_OFFSET/MAX_OFFSET are added by ali-ons itself.
// --fail-prefix: the first delivery of each body starting with P fails, by returning
// Consumer.ACTION_RETRY (--fail-mode retry) or by throwing (throw).
//
// Stop conditions (consume): --count "ok" deliveries reached (then --linger-ms more), the
// --timeout-ms deadline (status 1 if a --count was not reached, 0 with --count 0), or with
// --stdin-stop the end of stdin. A watchdog exits with status 3 if anything, closing
// included, is still running --grace-ms (15 s) after the deadline.
// Errors: one line on stderr each ("ons_broker_client: error: ..."); the client's own
// warnings only with --verbose ("ons_broker_client: client: ..."). Exit status: 0 ok,
// 1 failed, 2 bad usage or input, 3 watchdog.

const path = require('path');
const util = require('util');

const onsRoot = path.dirname(require.resolve('ali-ons/package.json'));
const { Producer, Consumer, Message } = require('ali-ons');
const onsVersion = require(path.join(onsRoot, 'package.json')).version;

const PROG = 'ons_broker_client';
const FROM_WHERE = {
  last: 'CONSUME_FROM_LAST_OFFSET',
  first: 'CONSUME_FROM_FIRST_OFFSET',
  timestamp: 'CONSUME_FROM_TIMESTAMP',
};
// ali-ons decodes properties into {TAGS: null, ...} and a trailing \u0002 into {"": ""}
const PLACEHOLDERS = new Set([ '' ]);

let verbose = false;

function oneLine(value) {
  let text = String(value);
  if (value instanceof Error) {
    text = value.name && value.name !== 'Error' ? `${value.name}: ${value.message}` : value.message;
  }
  return text.split(/\s+/).join(' ').trim();
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function error(message) {
  process.stderr.write(`${PROG}: error: ${oneLine(message)}\n`);
}

function exit(status) {
  // stdout/stderr are synchronous for files and pipes on Linux: nothing is lost
  process.exit(status);
}

class UsageError extends Error {}

function clientLog(args) {
  if (!verbose) return;
  const text = typeof args[0] === 'string' ?
    util.format(...args.map(arg => (arg instanceof Error ? oneLine(arg) : arg))) :
    args.map(oneLine).join(' ');
  process.stderr.write(`${PROG}: client: ${oneLine(text)}\n`);
}

const logger = {
  info() {},
  debug() {},
  warn(...args) {
    clientLog(args);
  },
  error(...args) {
    clientLog(args);
  },
};

// ali-ons asserts an httpclient even when nameSrv is given; it only uses it for onsAddr.
const noHttp = {
  async request(url) {
    throw new Error(`no HTTP lookups here (asked for ${url})`);
  },
};

const SPEC = {
  common: {
    namesrv: 'string', topic: 'string', 'timeout-ms': 'int', 'grace-ms': 'int', verbose: 'flag',
  },
  produce: { group: 'string', 'send-timeout-ms': 'int' },
  consume: {
    group: 'string', expression: 'string', count: 'int', 'linger-ms': 'int',
    'fail-prefix': 'string', 'fail-mode': 'string', from: 'string', 'rebalance-ms': 'int',
    'stdin-stop': 'flag',
  },
};

function parseArgs(argv) {
  const [ mode, ...rest ] = argv;
  if (mode !== 'produce' && mode !== 'consume') {
    throw new UsageError('usage: ons_broker_client.js produce|consume --namesrv HOST:PORT ...');
  }
  const known = Object.assign({}, SPEC.common, SPEC[mode]);
  const opts = {
    mode, 'timeout-ms': 30000, 'grace-ms': 15000, 'send-timeout-ms': 3000,
    group: mode === 'produce' ? 'rmqtwist_ons_producer' : undefined,
    expression: '*', count: 0, 'linger-ms': 0, 'fail-mode': 'retry', from: 'last',
    'rebalance-ms': undefined, 'stdin-stop': false, verbose: false,
  };
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    const name = arg.startsWith('--') ? arg.slice(2) : null;
    if (!name || !known[name]) throw new UsageError(`unknown option ${arg} for ${mode}`);
    if (known[name] === 'flag') {
      opts[name] = true;
      continue;
    }
    if (i + 1 >= rest.length) throw new UsageError(`${arg} needs a value`);
    const value = rest[++i];
    if (known[name] === 'int') {
      if (!/^\d+$/.test(value)) throw new UsageError(`${arg} needs a number >= 0, not ${value}`);
      opts[name] = Number(value);
    } else {
      opts[name] = value;
    }
  }
  for (const required of [ 'namesrv', 'topic', 'group' ]) {
    if (!opts[required]) throw new UsageError(`--${required} is required`);
  }
  if (!/^[^:]+:\d+$/.test(opts.namesrv)) throw new UsageError(`--namesrv needs HOST:PORT, not ${opts.namesrv}`);
  if (!FROM_WHERE[opts.from]) throw new UsageError(`--from is last, first or timestamp, not ${opts.from}`);
  if (opts['fail-mode'] !== 'retry' && opts['fail-mode'] !== 'throw') {
    throw new UsageError(`--fail-mode is retry or throw, not ${opts['fail-mode']}`);
  }
  return opts;
}

function clientOptions(opts) {
  return {
    httpclient: noHttp,
    nameSrv: opts.namesrv,
    logger,
  };
}

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on('data', chunk => chunks.push(chunk));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

function buildMessage(topic, spec, number) {
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
    throw new UsageError(`stdin line ${number} is not a JSON object`);
  }
  let body;
  if (typeof spec.bodyBase64 === 'string') {
    body = Buffer.from(spec.bodyBase64, 'base64');
  } else if (spec.body === undefined || typeof spec.body === 'string') {
    body = Buffer.from(spec.body || '', 'utf8');
  } else {
    throw new UsageError(`stdin line ${number}: body must be a string (bodyBase64 for bytes)`);
  }
  const msg = new Message(topic, spec.tags === undefined ? null : spec.tags, body);
  if (spec.tags === undefined || spec.tags === null) delete msg.properties.TAGS;
  if (spec.keys !== undefined && spec.keys !== null) {
    msg.keys = Array.isArray(spec.keys) ? spec.keys : String(spec.keys).split(' ');
  }
  for (const [ name, value ] of Object.entries(spec.properties || {})) {
    msg.properties[name] = String(value);
  }
  if (spec.delayLevel) msg.delayTimeLevel = Number(spec.delayLevel);
  return msg;
}

async function produce(opts, deadline) {
  const lines = (await readStdin()).split('\n').filter(line => line.trim());
  const specs = lines.map((line, i) => {
    try {
      return JSON.parse(line);
    } catch (err) {
      throw new UsageError(`stdin line ${i + 1} is not JSON: ${err.message}`);
    }
  });
  const messages = specs.map((spec, i) => buildMessage(opts.topic, spec, i + 1));
  const producer = new Producer(Object.assign(clientOptions(opts), {
    producerGroup: opts.group,
    sendMsgTimeout: opts['send-timeout-ms'],
  }));
  producer.on('error', err => logger.warn(err));
  await producer.ready();
  let sent = 0;
  let failure = null;
  for (const [ index, msg ] of messages.entries()) {
    if (Date.now() > deadline) {
      failure = new Error(`timed out after ${opts['timeout-ms']} ms with ${sent} of ${messages.length} messages sent`);
      break;
    }
    let result;
    try {
      result = await producer.send(msg);
    } catch (err) {
      failure = new Error(`send of message ${index} failed: ${oneLine(err)}`);
      break;
    }
    out({
      kind: 'sent', index, topic: opts.topic, msgId: result.msgId,
      queueId: Number(result.messageQueue.queueId), queueOffset: result.queueOffset,
      status: result.sendStatus, brokerName: result.messageQueue.brokerName,
    });
    sent++;
  }
  await producer.close();
  out({ kind: 'closed', sent, onsVersion });
  if (failure) throw failure;
  return 0;
}

function bodyFields(body) {
  const buffer = body ? Buffer.from(body) : Buffer.alloc(0);
  let text = buffer.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(buffer)) text = null; // not valid UTF-8
  return { body: text, bodyBase64: buffer.toString('base64') };
}

function describe(msg) {
  const receivedAt = Date.now();
  const properties = {};
  for (const [ name, value ] of Object.entries(msg.properties || {})) {
    if (PLACEHOLDERS.has(name) || value === null || value === undefined) continue;
    properties[name] = String(value);
  }
  const keys = msg.keys ? String(msg.keys).split(' ').filter(key => key) : [];
  return Object.assign({
    topic: msg.topic,
    tags: msg.tags === undefined ? null : msg.tags,
    keys,
    properties,
  }, bodyFields(msg.body), {
    queueId: msg.queueId,
    queueOffset: msg.queueOffset,
    reconsumeTimes: msg.reconsumeTimes,
    msgId: msg.msgId,
    bornTimestamp: msg.bornTimestamp,
    storeTimestamp: msg.storeTimestamp,
    bornHost: msg.bornHost,
    storeHost: msg.storeHost,
    commitLogOffset: msg.commitLogOffset,
    sysFlag: msg.sysFlag,
    flag: msg.flag,
    storeSize: msg.storeSize,
    receivedAt,
  });
}

function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms));
}

async function consume(opts, deadline) {
  const options = Object.assign(clientOptions(opts), {
    consumerGroup: opts.group,
    consumeFromWhere: FROM_WHERE[opts.from],
  });
  if (opts['rebalance-ms'] !== undefined) options.rebalanceInterval = opts['rebalance-ms'];
  const consumer = new Consumer(options);
  // expected ones too (QUERY_CONSUMER_OFFSET answering 22 for a new group): --verbose shows them
  consumer.on('error', err => logger.warn(err));

  let consumed = 0;
  let deliveries = 0;
  const failed = new Set();
  let reached;
  const whenReached = new Promise(resolve => { reached = resolve; });
  const prefix = opts['fail-prefix'];

  consumer.subscribe(opts.topic, opts.expression, async msg => {
    const record = describe(msg);
    const body = msg.body ? Buffer.from(msg.body) : Buffer.alloc(0);
    const key = body.toString('base64');
    const fail = prefix !== undefined && body.toString('utf8').startsWith(prefix) && !failed.has(key);
    deliveries++;
    if (fail) {
      failed.add(key);
      out(Object.assign({ kind: 'message', action: opts['fail-mode'] }, record));
      if (opts['fail-mode'] === 'throw') throw new Error(`failing the first delivery of ${msg.msgId} on purpose`);
      return Consumer.ACTION_RETRY;
    }
    consumed++;
    out(Object.assign({ kind: 'message', action: 'ok' }, record));
    if (opts.count && consumed >= opts.count) reached();
    return undefined;
  });

  // report the queues held, per topic, whenever they change
  const held = new Map();
  const watchQueues = setInterval(() => {
    const now = new Map();
    for (const { messageQueue } of consumer.processQueueTable.values()) {
      if (!now.has(messageQueue.topic)) now.set(messageQueue.topic, []);
      now.get(messageQueue.topic).push(messageQueue.queueId);
    }
    for (const topic of new Set([ ...held.keys(), ...now.keys() ])) {
      const ids = (now.get(topic) || []).sort((a, b) => a - b);
      if (JSON.stringify(ids) !== JSON.stringify(held.get(topic) || [])) {
        out({ kind: 'rebalance', topic, queueIds: ids });
        held.set(topic, ids);
      }
    }
  }, 100);

  await consumer.ready();
  out({ kind: 'started', group: opts.group, topic: opts.topic, clientId: consumer._mqClient.clientId, onsVersion });

  const stops = [ whenReached, sleep(Math.max(0, deadline - Date.now())) ];
  if (opts['stdin-stop']) {
    stops.push(new Promise(resolve => {
      process.stdin.on('end', resolve);
      process.stdin.on('error', resolve);
      process.stdin.resume();
    }));
  }
  await Promise.race(stops);
  if (opts.count && consumed >= opts.count && opts['linger-ms']) {
    await sleep(Math.min(opts['linger-ms'], Math.max(0, deadline - Date.now())));
  }
  // let the offset of the last consumed message be recorded before closing commits it
  for (let i = 0; i < 50; i++) {
    const busy = Array.from(consumer.processQueueTable.values())
      .some(({ processQueue }) => processQueue.msgCount > 0);
    if (!busy) break;
    await sleep(20);
  }
  await sleep(20);
  clearInterval(watchQueues);
  const finalConsumed = consumed;
  await consumer.close();
  const inner = Producer.defaultProducer; // the CLIENT_INNER_PRODUCER the consumer made
  if (inner) await inner.close();
  out({ kind: 'closed', consumed: finalConsumed, deliveries });
  if (opts.count && finalConsumed < opts.count) {
    const why = Date.now() < deadline ? 'stdin closed' : 'timed out';
    throw new Error(`${why} with ${finalConsumed} of ${opts.count} messages consumed`);
  }
  return 0;
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    error(err.message);
    return exit(2);
  }
  verbose = opts.verbose;
  const deadline = Date.now() + opts['timeout-ms'];
  const watchdog = setTimeout(() => {
    error(`watchdog: still running ${opts['grace-ms']} ms after the ${opts['timeout-ms']} ms deadline`);
    exit(3);
  }, opts['timeout-ms'] + opts['grace-ms']);
  watchdog.unref();
  try {
    if (opts.mode === 'produce') {
      await produce(opts, deadline);
    } else {
      await consume(opts, deadline);
    }
  } catch (err) {
    error(err instanceof UsageError ? err.message : err);
    return exit(err instanceof UsageError ? 2 : 1);
  }
  return exit(0);
}

process.on('unhandledRejection', err => {
  error(`unhandled rejection: ${oneLine(err)}`);
  exit(1);
});

main();
