// An independent ConfigService client in another language, with the default settings
// of @grpc/grpc-js (4 MiB receive limit) and protobuf decoding from the .proto files:
// what a Node service team would run. Used by tests/e2e/test_config_limits.py.
//
//   node config_client.js <host:port> <organization> <start_revision> <page_size>
//
// Reads env AGENTREADY_TOKEN. Opens WatchConfig at start_revision, assembles the first
// complete SNAPSHOT or CHANGE (fragments joined), then lists every key with ListConfigs
// at page_size, and prints one JSON line: what it received.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, organization, startRevision, pageSize] = process.argv.slice(2);
const token = process.env.AGENTREADY_TOKEN;
const protos = path.resolve(__dirname, "..", "..", "..", "protos");
const definition = protoLoader.loadSync("agentready/config/v1/config_service.proto", {
  includeDirs: [protos],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const { ConfigService } = grpc.loadPackageDefinition(definition).agentready.config.v1;
const client = new ConfigService(address, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.add("authorization", `Bearer ${token}`);

function fail(what, error) {
  process.stdout.write(JSON.stringify({ error: what, code: error.code, details: error.details }) + "\n");
  process.exit(2);
}

function watch() {
  return new Promise((resolve) => {
    const call = client.WatchConfig(
      { organization, start_revision: startRevision },
      metadata,
    );
    const parts = [];
    call.on("data", (message) => {
      if (message.type === "EVENT_TYPE_PROGRESS") {
        return;
      }
      parts.push(message);
      if (message.fragment) {
        return; // more of the same snapshot or revision follow
      }
      call.cancel();
      resolve({
        type: message.type,
        revision: Number(message.revision),
        reset: message.reset,
        fragments: parts.length,
        same_revision: parts.every((p) => p.revision === message.revision && p.type === message.type),
        entries: parts.reduce((n, p) => n + p.entries.length, 0),
        changes: parts.reduce((n, p) => n + p.changes.length, 0),
        keys: parts.flatMap((p) => p.entries.map((e) => e.key)),
      });
    });
    call.on("error", (error) => {
      if (error.code !== grpc.status.CANCELLED) {
        fail("WatchConfig", error);
      }
    });
  });
}

function listAll() {
  return new Promise((resolve) => {
    let listed = 0;
    let pages = 0;
    const next = (pageToken) => {
      client.ListConfigs(
        { organization, page_size: Number(pageSize), page_token: pageToken },
        metadata,
        (error, response) => {
          if (error) {
            fail("ListConfigs", error);
          }
          listed += response.configs.length;
          pages += 1;
          if (response.next_page_token) {
            next(response.next_page_token);
          } else {
            resolve({ listed, pages });
          }
        },
      );
    };
    next("");
  });
}

(async () => {
  const watched = await watch();
  const listing = await listAll();
  process.stdout.write(JSON.stringify({ ...watched, ...listing }) + "\n");
  client.close();
})();
