// Signalbox challenge solver. Finds a counter such that SHA-256("<challenge>:<counter>")
// starts with `difficulty` zero bits, then posts it to the verify path, in the query of an
// empty POST. Self-contained: no external resources, no WebCrypto (which plain-HTTP pages do
// not have).
(function () {
  "use strict";
  var K = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
  ];
  var W = new Int32Array(64);

  // One SHA-256 compression of the 16 words m[off..off+16] into the state h (8 words).
  function compress(h, m, off) {
    var i;
    for (i = 0; i < 16; i++) W[i] = m[off + i];
    for (i = 16; i < 64; i++) {
      var x = W[i - 15], y = W[i - 2];
      var s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      var s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    var a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (i = 0; i < 64; i++) {
      var S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      var t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
      var S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      var t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] = (h[0] + a) | 0; h[1] = (h[1] + b) | 0; h[2] = (h[2] + c) | 0; h[3] = (h[3] + d) | 0;
    h[4] = (h[4] + e) | 0; h[5] = (h[5] + f) | 0; h[6] = (h[6] + g) | 0; h[7] = (h[7] + hh) | 0;
  }

  var IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

  // A hasher for SHA-256(prefix + suffix) over ASCII strings: the whole 64-byte blocks of the
  // prefix are compressed once (the midstate); each call only hashes what follows them.
  function prefixHasher(prefix) {
    var whole = prefix.length >> 6, i;
    var mid = IV.slice(), block = new Int32Array(16);
    for (var b = 0; b < whole; b++) {
      block.fill(0);
      for (i = 0; i < 64; i++) block[i >> 2] |= (prefix.charCodeAt(b * 64 + i) & 0xff) << (24 - 8 * (i & 3));
      compress(mid, block, 0);
    }
    var rest = prefix.slice(whole * 64), h = new Int32Array(8), m = new Int32Array(64);
    return function (suffix) {
      var tail = rest + suffix, n = tail.length, blocks = ((n + 8) >> 6) + 1, words = blocks * 16;
      m.fill(0, 0, words);
      for (i = 0; i < n; i++) m[i >> 2] |= (tail.charCodeAt(i) & 0xff) << (24 - 8 * (i & 3));
      m[n >> 2] |= 0x80 << (24 - 8 * (n & 3));
      m[words - 1] = (whole * 64 + n) * 8;
      for (i = 0; i < 8; i++) h[i] = mid[i];
      for (var off = 0; off < words; off += 16) compress(h, m, off);
      return h;
    };
  }

  function leadingZeroBits(words) {
    for (var i = 0, bits = 0; i < 8; i++, bits += 32) {
      if (words[i] !== 0) return bits + Math.clz32(words[i]);
    }
    return 256;
  }

  // Shown only when this script runs (without JavaScript the page shows its <noscript> note).
  document.getElementById("sb-working").hidden = false;
  var config = JSON.parse(document.getElementById("sb-challenge").textContent);
  var hash = prefixHasher(config.challenge + ":");
  var counter = 0;
  // Work in slices of about 50 ms, then yield so the page stays responsive and shows progress.
  function batch() {
    var until = Date.now() + 50;
    do {
      for (var end = counter + 2000; counter < end; counter++) {
        if (leadingZeroBits(hash(String(counter))) >= config.difficulty) {
          // The solution travels in the query of an empty POST: the edge answers from the
          // headers alone (a body could arrive after origin had answered the request).
          var form = document.getElementById("sb-form");
          form.action = form.getAttribute("action") + "?challenge=" +
            encodeURIComponent(config.challenge) + "&counter=" + counter;
          form.submit();
          return;
        }
      }
    } while (Date.now() < until);
    document.getElementById("sb-progress").textContent = String(counter);
    setTimeout(batch, 0);
  }
  batch();
})();
