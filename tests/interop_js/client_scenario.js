// An independent LwM2M client (lwm2m-node-lib, Telefonica, npm) joins a server.
// Usage: node client_scenario.js SERVER_PORT ENDPOINT
// Creates /3/0 (Device) and /3311/0 (Light Control), registers, and prints one JSON line per
// event on stdout: {"event": "registered", ...}, then {"event": "write", "path": ..., "value": ...}
// for each stored value as it changes (a Write's payload as the client stored it, as text).
// Runs until stopped (the Python test stops it by pid).
'use strict';

const lib = require('lwm2m-node-lib');
const client = lib.client;
const port = parseInt(process.argv[2], 10);
const endpoint = process.argv[3];

const config = {
    client: {
        lifetime: '300',
        version: '1.0',  // what this library implements (no Send: that came with 1.1)
        logLevel: 'FATAL',
        observe: {period: 3000},
        ipProtocol: 'udp4',
        serverProtocol: 'udp4',
        formats: [{name: 'text/plain', value: 0}],
        writeFormat: 'text/plain'
    }
};

function out(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function step(fn, ...args) {
    return new Promise((resolve, reject) => fn(...args, (error, value) => (error ? reject(error) : resolve(value))));
}

async function main() {
    await step(client.init, config);
    await step(client.registry.create, '/3/0');
    await step(client.registry.create, '/3311/0');
    await step(client.registry.setResource, '/3/0', '0', 'lwm2m-node-lib');
    await step(client.registry.setResource, '/3/0', '13', '0');
    await step(client.registry.setResource, '/3311/0', '5851', '100');
    const info = await step(client.register, '127.0.0.1', port, null, endpoint);
    out({event: 'registered', location: info.location, port: info.localPort});
    // Updates every 3 s, as a client with a short lifetime sends them: the gateway retries a
    // time Write that was lost because it arrived before this client listened.
    setInterval(() => client.update(info, (error) => out({event: 'updated', error: error ? String(error) : null})),
                3000);
    // Report every stored value that changes (a Write stores the payload as received, as
    // text): watching the registry also sees a Write that arrives before a handler is set.
    const seen = {};
    setInterval(() => client.registry.list((error, objects) => {
        for (const obj of objects || []) {
            for (const res of Object.keys(obj.attributes)) {
                const path = obj.objectUri + '/' + res;
                const value = String(obj.attributes[res]);
                if (seen[path] !== value) {
                    seen[path] = value;
                    out({event: 'write', path: path, value: value});
                }
            }
        }
    }), 50);
}

main().catch((e) => {
    out({event: 'error', error: String(e.message || e.name || e)});
    process.exit(1);
});
