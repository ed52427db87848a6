// Node's built-in fetch (undici), for tests/real_clients.rs:
//
//     node tests/clients/node_fetch.mjs get URL [post URL FILE] ...
//
// `post URL FILE` sends FILE as a ReadableStream body with `duplex: 'half'`, the way a Node
// service streams an upload: the length is unknown, so the body goes out chunked.
//
// One line per operation on stdout: `OP STATUS VERSION BODY_LENGTH BODY_SHA256 PREVIEW`.
// fetch does not tell which HTTP version answered; VERSION is `unknown`. (Node's fetch speaks
// only HTTP/1.1 to an http:// URL: undici's HTTP/2 needs TLS and an opt-in.)

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';

const args = process.argv.slice(2);
let i = 0;
while (i < args.length) {
  const op = args[i++];
  const url = args[i++];
  const init = { signal: AbortSignal.timeout(30_000) };
  if (op === 'post') {
    const file = args[i++];
    init.method = 'POST';
    init.body = Readable.toWeb(createReadStream(file, { highWaterMark: 64 * 1024 }));
    init.duplex = 'half';
  } else if (op !== 'get') {
    throw new Error(`unknown operation ${op}`);
  }
  const response = await fetch(url, init);
  const sha256 = createHash('sha256');
  let length = 0;
  let preview = '';
  for await (const chunk of response.body ?? []) {
    sha256.update(chunk);
    for (let k = 0; k < chunk.length && preview.length < 80; k++) {
      const b = chunk[k];
      preview += b > 32 && b < 127 ? String.fromCharCode(b) : '.';
    }
    length += chunk.length;
  }
  console.log(`${op} ${response.status} unknown ${length} ${sha256.digest('hex')} ${preview}`);
}
