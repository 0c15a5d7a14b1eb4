// The usual alternative to pushq, written the way the docs of `web-push` and
// `amqplib` suggest: one connection, one channel with a prefetch, a
// keep-alive agent, consume a queue, parse the event, sendNotification, ack.
// No database, so no idempotency: a message redelivered after a crash is sent
// again. No retry, no rate limit, no result events: the fault-free bench needs
// none, and pushq pays for all of them.
//
// Started by `pushq-bench --peer` with:
//   PEER_AMQP_URL, PEER_QUEUE, PEER_PREFETCH (256),
//   PEER_VAPID_PUBLIC_KEY, PEER_VAPID_PRIVATE_KEY, PEER_VAPID_SUBJECT
// Prints `{"ready":true}` once it consumes, and `{"acked":N,"failed":M}` when
// SIGTERM stops it.
'use strict';

const https = require('https');
const net = require('net');
const amqp = require('amqplib');
const webpush = require('web-push');

// web-push always calls https.request and uses the agent only when it is an
// https.Agent. The bench's sink speaks plain HTTP on loopback (as it does for
// pushq), so this keep-alive https.Agent opens plain TCP sockets: the same
// requests, minus TLS, for both.
class PlainAgent extends https.Agent {
  createConnection(options, callback) {
    const socket = net.createConnection({ host: options.host, port: options.port });
    if (callback) {
      socket.once('connect', () => callback(null, socket));
      socket.once('error', (err) => callback(err));
      return undefined;
    }
    return socket;
  }
}

const env = (name, fallback) => {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) throw new Error(`${name} is not set`);
    return fallback;
  }
  return value;
};

const agent = process.env.PEER_TLS === 'true'
  ? new https.Agent({ keepAlive: true })
  : new PlainAgent({ keepAlive: true });
const vapidDetails = {
  subject: env('PEER_VAPID_SUBJECT'),
  publicKey: env('PEER_VAPID_PUBLIC_KEY'),
  privateKey: env('PEER_VAPID_PRIVATE_KEY'),
};

// pushq's payload rule: a JSON string is sent as its UTF-8 bytes, any other
// value as compact JSON, absent or null as an empty push.
function payloadOf(data) {
  if (data.payload === undefined || data.payload === null) return null;
  return typeof data.payload === 'string' ? data.payload : JSON.stringify(data.payload);
}

async function main() {
  // Named, so that the benchmark reads RabbitMQ's counters for this connection.
  const connection = await amqp.connect(env('PEER_AMQP_URL'), {
    clientProperties: { connection_name: env('PEER_CONNECTION_NAME') },
  });
  const channel = await connection.createChannel();
  await channel.prefetch(Number(env('PEER_PREFETCH', '256')));
  const queue = env('PEER_QUEUE');
  let acked = 0;
  let failed = 0;

  await channel.consume(queue, async (message) => {
    if (message === null) return;
    try {
      const event = JSON.parse(message.content.toString('utf8'));
      const data = event.data;
      const options = { vapidDetails, TTL: data.ttl ?? 86400, agent };
      if (data.urgency) options.urgency = data.urgency;
      if (data.topic) options.topic = data.topic;
      await webpush.sendNotification(data.to.subscription, payloadOf(data), options);
      channel.ack(message);
      acked += 1;
    } catch (err) {
      failed += 1;
      if (failed <= 5) console.error(`send failed: ${err.statusCode ?? ''} ${err.message}`);
      channel.nack(message, false, false);
    }
  });
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);

  process.once('SIGTERM', async () => {
    try {
      await channel.close();
      await connection.close();
    } finally {
      process.stdout.write(`${JSON.stringify({ acked, failed })}\n`);
      process.exit(0);
    }
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
