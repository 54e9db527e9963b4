#!/usr/bin/env node
// A Recur client in JavaScript that knows only protos/recur/v1/inference.proto: no generated code,
// no Recur SDK. It calls one streaming method and prints each response message as one JSON line,
// as the server sent it ("token": one token; "tokens": several packed into one message; "final").
//
//   npm ci --prefix clients/node
//   node clients/node/stream.js 127.0.0.1:50051 Complete '{"text": "weather in", "max_tokens": 8}'
//
// Methods: Translate, Analyze (sentiment), Complete. The request is the method's request message
// as JSON, with the .proto's field names. Exits 0 after the final message; on an error, prints
// {"error": CODE_NAME, "details": ...} and exits 1; on bad arguments, exits 2.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.join(__dirname, "..", "..", "protos", "recur", "v1", "inference.proto");
const SERVICES = {
  Translate: "TranslationService",
  Analyze: "SentimentService",
  Complete: "AutocompleteService",
};

function usage(message) {
  process.stderr.write(`stream.js: ${message}\n`);
  process.stderr.write("usage: node stream.js HOST:PORT Translate|Analyze|Complete 'REQUEST_JSON'\n");
  process.exit(2);
}

function main() {
  const [target, method, requestJson] = process.argv.slice(2);
  if (!target || !method || requestJson === undefined) usage("three arguments are needed");
  if (!(method in SERVICES)) usage(`unknown method ${JSON.stringify(method)}`);
  let request;
  try {
    request = JSON.parse(requestJson);
  } catch (error) {
    usage(`the request is not JSON: ${error.message}`);
  }
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true, // the .proto's field names, as the request JSON uses them
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true, // each message says which field of its `event` oneof it carries
  });
  const recur = grpc.loadPackageDefinition(definition).recur.v1;
  const client = new recur[SERVICES[method]](target, grpc.credentials.createInsecure());
  const deadline = new Date(Date.now() + 30000);
  const call = client[method](request, { deadline });
  let failed = false;
  call.on("data", (response) => {
    const kind = response.event;
    process.stdout.write(JSON.stringify({ event: kind, [kind]: response[kind] }) + "\n");
  });
  call.on("error", (error) => {
    failed = true;
    const code = Object.keys(grpc.status).find((name) => grpc.status[name] === error.code);
    process.stdout.write(JSON.stringify({ error: code, details: error.details }) + "\n");
  });
  call.on("status", (status) => {
    // the call's last event, however it ended
    client.close();
    process.exitCode = failed || status.code !== grpc.status.OK ? 1 : 0;
  });
}

main();
