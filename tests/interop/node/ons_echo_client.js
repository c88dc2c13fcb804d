#!/usr/bin/env node
'use strict';

// Drive the ali-ons RocketMQ client's OWN remoting layer against a server of ours.
//
//   node ons_echo_client.js HOST PORT [SPEC.json | -]      (no file or "-": read stdin)
//
// Requests are built with ali-ons' RemotingCommand (lib/protocol/command/remoting_command.js)
// and sent with ali-ons' Channel (lib/channel.js, a tcp-base client), exactly as
// ali-ons' MQClientAPI does: RemotingCommand.createRequestCommand(code, customHeader),
// command.body = Buffer, channel.invoke(command, timeout). Responses are decoded by
// Channel.decode -> RemotingCommand.decode and matched to the request by tcp-base via the
// opaque. Nothing here encodes or decodes a frame by itself.
//
// SPEC (JSON object):
//   {
//     "mode": "sequential" | "concurrent",   // concurrent: every invoke in flight at once
//     "timeout": 5000,                       // per-request response timeout (ms)
//     "deadline": 20000,                     // whole-run watchdog (ms)
//     "allowStray": false,                   // a frame that matches no pending request is an
//                                            // error unless this is true
//     "requests": [
//       { "code": 105,
//         "customHeader": {"topic": "T", "d": 4, "k": false},  // as MQClientAPI passes it
//         "extFields": {...},                // optional, given to the constructor as is
//         "remark": "text",                  // optional; null is sent as "remark":null
//         "body": {"utf8": "..."} | {"base64": "..."} | {"hex": "..."}
//                 | {"pattern": {"length": N, "seed": S}},   // byte i = (S + i*31) & 0xff
//         "oneway": false,                   // true: channel.invokeOneway (no wait)
//         "timeout": 5000 }
//     ]
//   }
//
// OUTPUT: one JSON line per decoded response, in the order the responses were matched:
//   {"kind":"response","index":i,"sent":{"opaque":..,"flag":..,"code":..},
//    "code":..,"opaque":..,"flag":..,"remark":..,"extFields":{..},
//    "bodyPresent":bool,"bodyLength":n,"body":"<base64>",
//    "type":"RESPONSE_COMMAND","isResponseType":true,"isOnewayRPC":false,
//    "language":"JAVA","version":121,               // ali-ons getters (constants!)
//    "wire":{"serializeTypeByte":0,"headerLengthField":..,"headerLength":..,
//            "header":{...raw JSON header as sent by the server...}}}
// plus {"kind":"sent",...} lines (one per request, before anything is sent) and
// {"kind":"stray",...} lines for frames that matched no pending request (e.g. the reply to
// an invokeOneway request: ali-ons never sets the oneway flag bit).
// Exit status: 0 all good; 1 an invoke failed (timeout, closed socket, decode error);
// 2 bad usage/spec; 3 watchdog deadline; 4 stray frames without allowStray.

const fs = require('fs');
const path = require('path');

const onsRoot = path.dirname(require.resolve('ali-ons/package.json'));
const Channel = require(path.join(onsRoot, 'lib', 'channel'));
const RemotingCommand = require(path.join(onsRoot, 'lib', 'protocol', 'command', 'remoting_command'));
const onsVersion = require(path.join(onsRoot, 'package.json')).version;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(status, message, err) {
  process.stderr.write(`ons_echo_client: ${message}${err ? ': ' + (err.stack || err) : ''}\n`);
  process.exit(status);
}

function readSpec(arg) {
  const text = (!arg || arg === '-') ? fs.readFileSync(0, 'utf8') : fs.readFileSync(arg, 'utf8');
  return JSON.parse(text);
}

function makeBody(spec) {
  if (spec === undefined || spec === null) return null;
  if (typeof spec.utf8 === 'string') return Buffer.from(spec.utf8, 'utf8');
  if (typeof spec.base64 === 'string') return Buffer.from(spec.base64, 'base64');
  if (typeof spec.hex === 'string') return Buffer.from(spec.hex, 'hex');
  if (spec.pattern) {
    const { length, seed = 0 } = spec.pattern;
    const buf = Buffer.alloc(length);
    for (let i = 0; i < length; i++) buf[i] = (seed + i * 31) & 0xff;
    return buf;
  }
  throw new Error(`bad body spec ${JSON.stringify(spec)}`);
}

// ali-ons' Channel, plus a side record of what each frame looked like on the wire. The
// decoding itself is ali-ons' (super.decode -> RemotingCommand.decode).
class RecordingChannel extends Channel {
  constructor(address, options) {
    super(address, options);
    this.wire = new Map(); // opaque -> wire info of the last frame with that opaque
    this.strays = [];
  }

  decode(body, header) {
    const entity = super.decode(body, header);
    const packet = Buffer.concat([ header, body || Buffer.alloc(0) ]);
    const field = packet.readUInt32BE(4);
    const headerLength = field & 0xffffff;
    let raw = null;
    try {
      raw = JSON.parse(packet.slice(8, 8 + headerLength).toString('utf8'));
    } catch (e) {
      raw = null;
    }
    const wire = {
      totalLength: packet.readInt32BE(0),
      serializeTypeByte: field >>> 24,
      headerLengthField: packet.readInt32BE(4),
      headerLength,
      header: raw,
    };
    // tcp-base looks the id up in its pending-invoke table right after decode() returns.
    const matched = entity.isResponse && this._invokes.has(entity.id);
    if (matched) {
      this.wire.set(entity.id, wire);
    } else {
      this.strays.push({ entity, wire });
    }
    return entity;
  }
}

function describe(command, wire) {
  const body = command.body;
  return {
    code: command.code,
    opaque: command.opaque,
    flag: command.flag,
    remark: command.remark === undefined ? null : command.remark,
    extFields: command.extFields === undefined ? null : command.extFields,
    bodyPresent: body !== undefined && body !== null,
    bodyLength: body ? body.length : 0,
    body: body ? body.toString('base64') : '',
    type: command.type,
    isResponseType: command.isResponseType,
    isOnewayRPC: command.isOnewayRPC,
    language: command.language,
    version: command.version,
    wire: wire || null,
  };
}

async function main() {
  const [ host, port, specArg ] = process.argv.slice(2);
  if (!host || !port) fail(2, 'usage: ons_echo_client.js HOST PORT [SPEC.json|-]');
  let spec;
  try {
    spec = readSpec(specArg);
  } catch (err) {
    fail(2, 'cannot read the request spec', err);
  }
  const mode = spec.mode || 'sequential';
  if (mode !== 'sequential' && mode !== 'concurrent') fail(2, `bad mode ${mode}`);
  const defaultTimeout = spec.timeout || 5000;

  const watchdog = setTimeout(() => fail(3, `deadline of ${spec.deadline || 20000} ms passed`),
    spec.deadline || 20000);
  watchdog.unref();

  const commands = (spec.requests || []).map((r, index) => {
    const options = { code: r.code };
    if (r.customHeader !== undefined) options.customHeader = r.customHeader;
    if (r.extFields !== undefined) options.extFields = r.extFields;
    if (r.remark !== undefined) options.remark = r.remark;
    // The constructor draws the opaque from ali-ons' process-wide OpaqueGenerator (1, 2, ...).
    const command = new RemotingCommand(options);
    const body = makeBody(r.body);
    if (body) command.body = body;
    return { index, r, command };
  });
  for (const { index, r, command } of commands) {
    out({ kind: 'sent', index, opaque: command.opaque, flag: command.flag, code: command.code,
      oneway: !!r.oneway, bodyLength: command.body ? command.body.length : 0,
      onsVersion });
  }

  const channel = new RecordingChannel(`${host}:${port}`, {
    logger: { info() {}, warn(...a) { process.stderr.write(`[tcp-base warn] ${a.join(' ')}\n`); },
      error(...a) { process.stderr.write(`[tcp-base error] ${a.join(' ')}\n`); } },
    responseTimeout: defaultTimeout,
  });
  const errors = [];
  channel.on('error', err => errors.push(err));
  await channel.ready();

  const invokeOne = async ({ index, r, command }) => {
    const sent = { opaque: command.opaque, flag: command.flag, code: command.code };
    if (r.oneway) {
      await channel.invokeOneway(command);
      return;
    }
    const response = await channel.invoke(command, r.timeout || defaultTimeout);
    out(Object.assign({ kind: 'response', index, sent },
      describe(response, channel.wire.get(response.opaque))));
  };

  let status = 0;
  try {
    if (mode === 'concurrent') {
      await Promise.all(commands.map(invokeOne));
    } else {
      for (const c of commands) await invokeOne(c);
    }
  } catch (err) {
    process.stderr.write(`ons_echo_client: invoke failed: ${err.name}: ${err.message}\n`);
    status = 1;
  }

  for (const { entity, wire } of channel.strays) {
    out(Object.assign({ kind: 'stray', isResponse: entity.isResponse }, describe(entity.data, wire)));
  }
  if (status === 0 && channel.strays.length && !spec.allowStray) {
    process.stderr.write(`ons_echo_client: ${channel.strays.length} frame(s) matched no request\n`);
    status = 4;
  }
  if (status === 0 && errors.length) {
    process.stderr.write(`ons_echo_client: channel error: ${errors[0].stack || errors[0]}\n`);
    status = 1;
  }

  await channel.close();
  clearTimeout(watchdog);
  process.exitCode = status;
  // Everything is closed, so node exits on its own; should anything still hold the loop
  // open, leave anyway.
  setTimeout(() => process.exit(status), 1000).unref();
}

main().catch(err => fail(1, 'failed', err));
