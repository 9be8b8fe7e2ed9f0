// An independent LwM2M server (lwm2m-node-lib, Telefonica, npm) manages one client.
// Usage: node server_scenario.js PORT
// Waits for a Register, then runs Read, Write, Write-Attributes, Discover, Observe and
// Execute against the client and prints one JSON line per step on stdout:
//   {"step": NAME, "error": null | "text", "value": ...}
// Exits 0 after the last step (the Python test checks the values), 1 on a setup failure.
'use strict';

const lib = require('lwm2m-node-lib');
const coap = require('coap');
const server = lib.server;
const port = parseInt(process.argv[2], 10);

// Standard content-format numbers (the library's defaults are pre-standard drafts).
coap.registerFormat('application/senml+cbor', 112);

const config = {
    port: port,
    lifetimeCheckInterval: 1000,
    udpWindow: 100,
    defaultType: 'Device',
    types: [],
    logLevel: 'FATAL',
    ipProtocol: 'udp4',
    serverProtocol: 'udp4',
    formats: [{name: 'text/plain', value: 0}],
    writeFormat: 'text/plain',
    defaultAcceptFormat: 'text/plain'
};

function out(step, error, value) {
    process.stdout.write(JSON.stringify({
        step: step,
        error: error ? String(error.message || error.name || error) + (error.code ? ' ' + error.code : '') : null,
        value: value === undefined ? null : value
    }) + '\n');
}

function wait(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

function call(fn, ...args) {
    return new Promise((resolve) => fn(...args, (error, value) => resolve([error, value])));
}

async function scenario(endpoint) {
    const [gerr, device] = await call(server.getDevice, endpoint);
    if (gerr) {
        out('get_device', gerr);
        process.exit(1);
    }
    const id = device.id;
    let r;
    r = await call(server.read, id, 3, 0, 0); out('read_manufacturer', ...r);
    r = await call(server.read, id, 3311, 0, 5851); out('read_level', ...r);
    r = await call(server.write, id, 3311, 0, 5851, '40'); out('write_level', ...r);
    await wait(2600);  // the fade to 40 % takes 2 s
    r = await call(server.read, id, 3311, 0, 5851); out('read_level_after', ...r);
    r = await call(server.read, id, 3416, 0, 2); out('read_ucifi_command', ...r);
    r = await call(server.read, id, 3416, 0, 3); out('read_ucifi_dimming', ...r);
    r = await call(server.read, id, 10250, 0, 5); out('read_group', ...r);
    r = await call(server.writeAttributes, id, 10250, 0, 5, {pmin: '5', pmax: '60'}); out('wattr_group', ...r);
    r = await call(server.read, id, 10250, 0, 5); out('read_group_after', ...r);
    r = await call(server.writeAttributes, id, 3311, 0, 5851, {pmin: '1', pmax: '3'}); out('wattr_level', ...r);
    r = await call(server.discover, id, 3311, 0, 5851); out('discover_resource', ...r);
    r = await call(server.discover, id, 3311, 0); out('discover_instance', ...r);
    r = await call(server.discover, id, 3311); out('discover_object', ...r);
    const notes = [];
    const t0 = Date.now();
    r = await call(server.observe, id, 3311, 0, 5851, (value) => notes.push([Date.now() - t0, value]));
    out('observe', ...r);
    r = await call(server.write, id, 3311, 0, 5851, '80'); out('write_level_80', ...r);
    await wait(7000);  // a 2 s fade, then pmax (3 s) notifications without a change
    out('notifications', null, notes);
    r = await call(server.cancelObserver, id, 3311, 0, 5851); out('cancel', ...r);
    r = await call(server.execute, id, 10250, 0, 9, ''); out('execute_identify', ...r);
    r = await call(server.execute, id, 3311, 0, 5851, ''); out('execute_value', ...r);
    r = await call(server.read, id, 3311, 0, 9999); out('read_unknown', ...r);
    out('done', null, true);
    process.exit(0);  // server.stop() waits for registrations that never end
}

server.start(config, (error, info) => {
    if (error) {
        out('start', error);
        process.exit(1);
    }
    server.setHandler(info, 'registration', (endpoint, lifetime, version, binding, payload, callback) => {
        out('register', null, {endpoint: endpoint, lifetime: lifetime, version: version, binding: binding,
                               payload: payload});
        callback();
        setTimeout(() => scenario(endpoint).catch((e) => { out('scenario', e); process.exit(1); }), 300);
    });
    server.setHandler(info, 'updateRegistration', (object, callback) => callback());
    server.setHandler(info, 'unregistration', (device, callback) => callback(null));
    out('listening', null, port);
});
