// The header model of the corpus: what each browser engine sends on a top-level navigation,
// held to real Chromium and Firefox by compare-captures.mjs (the browser suite's captures).
// Over plain HTTP browsers send no client hints, no `sec-fetch-*` and advertise only
// `gzip, deflate`; over HTTPS Chromium (from 89) adds client hints, and Chromium (from 124)
// and Firefox (from 128) a `priority` header.

// What a browser family sends on a top-level navigation.
export function browserFamily(ua) {
  let m;
  if ((m = ua.match(/(?:CriOS|FxiOS|EdgiOS)\/(\d+)/))) return { engine: 'webkit', major: Number(m[1]), ios: true };
  if ((m = ua.match(/Edg(?:A)?\/(\d+)/))) return { engine: 'chromium', brand: 'Microsoft Edge', major: Number(m[1]) };
  if ((m = ua.match(/OPR\/(\d+)/))) return { engine: 'chromium', brand: 'Opera', major: Number(ua.match(/Chrome\/(\d+)/)?.[1] ?? m[1]) };
  if ((m = ua.match(/SamsungBrowser\/(\d+)/))) return { engine: 'chromium', brand: 'Samsung Internet', major: Number(ua.match(/Chrome\/(\d+)/)?.[1] ?? 0) };
  if ((m = ua.match(/Chrome\/(\d+)/))) return { engine: 'chromium', brand: 'Google Chrome', major: Number(m[1]) };
  if ((m = ua.match(/Firefox\/(\d+)/))) return { engine: 'gecko', major: Number(m[1]) };
  if ((m = ua.match(/Version\/(\d+)(?:\.(\d+))?.*Safari\//))) return { engine: 'webkit', major: Number(m[1]), minor: Number(m[2] ?? 0) };
  return { engine: 'other', major: 0 };
}

export function platformOf(ua) {
  if (/Android/.test(ua)) return 'Android';
  if (/iPhone|iPad|iPod/.test(ua)) return 'iOS';
  if (/CrOS/.test(ua)) return 'Chrome OS';
  if (/Windows/.test(ua)) return 'Windows';
  if (/Mac OS X|Macintosh/.test(ua)) return 'macOS';
  if (/Linux/.test(ua)) return 'Linux';
  return 'Unknown';
}

function acceptLanguage(lang, engine) {
  const primary = lang && /^[a-z]{2}(-[A-Z]{2})?$/.test(lang) ? lang : 'en-US';
  const base = primary.split('-')[0];
  if (engine === 'gecko') {
    if (base === 'en') return primary === base ? 'en;q=0.5' : `${primary},en;q=0.5`;
    return primary === base ? `${base},en-US;q=0.7,en;q=0.3` : `${primary},${base};q=0.8,en-US;q=0.5,en;q=0.3`;
  }
  if (base === 'en') return primary === base ? 'en' : `${primary},en;q=0.9`;
  return primary === base ? `${base},en;q=0.9` : `${primary},${base};q=0.9,en;q=0.8`;
}

export function browserHeaders(entry, https, page) {
  const ua = entry.userAgent;
  const f = browserFamily(ua);
  const site = page === '/' ? 'none' : 'same-origin';
  const h = [['host', 'shop.example']];
  const fetchMeta = () => [['sec-fetch-site', site], ['sec-fetch-mode', 'navigate'], ['sec-fetch-user', '?1'], ['sec-fetch-dest', 'document']];
  if (f.engine === 'chromium') {
    if (https && f.major >= 89) {
      h.push(['sec-ch-ua', `"${f.brand}";v="${f.major}", "Chromium";v="${f.major}", "Not_A Brand";v="24"`]);
      h.push(['sec-ch-ua-mobile', /Mobile/.test(ua) ? '?1' : '?0']);
      h.push(['sec-ch-ua-platform', `"${platformOf(ua)}"`]);
    }
    h.push(['upgrade-insecure-requests', '1'], ['user-agent', ua]);
    h.push(['accept', 'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7']);
    if (https && f.major >= 80) h.push(...fetchMeta());
    h.push(['accept-encoding', !https ? 'gzip, deflate' : f.major >= 123 ? 'gzip, deflate, br, zstd' : 'gzip, deflate, br']);
    h.push(['accept-language', acceptLanguage(entry.language, 'chromium')]);
    // Chromium sends `priority` on HTTP/2 and HTTP/3, which browsers speak only over TLS.
    if (https && f.major >= 124) h.push(['priority', 'u=0, i']);
  } else if (f.engine === 'gecko') {
    h.push(['user-agent', ua], ['accept', 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8']);
    h.push(['accept-language', acceptLanguage(entry.language, 'gecko')]);
    h.push(['accept-encoding', !https ? 'gzip, deflate' : f.major >= 126 ? 'gzip, deflate, br, zstd' : 'gzip, deflate, br']);
    h.push(['upgrade-insecure-requests', '1']);
    if (https && f.major >= 90) h.push(['sec-fetch-dest', 'document'], ['sec-fetch-mode', 'navigate'], ['sec-fetch-site', site], ['sec-fetch-user', '?1']);
    if (f.major >= 128) h.push(['priority', 'u=0, i']);
  } else {
    // WebKit (Safari, and every iOS browser). Safari sends sec-fetch-* from 16.4.
    if (https && (f.major > 16 || (f.major === 16 && (f.minor ?? 0) >= 4) || f.ios)) {
      h.push(['sec-fetch-dest', 'document'], ['sec-fetch-mode', 'navigate'], ['sec-fetch-site', site]);
    }
    h.push(['user-agent', ua], ['accept', 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8']);
    h.push(['accept-language', acceptLanguage(entry.language, 'webkit')]);
    h.push(['accept-encoding', https ? 'gzip, deflate, br' : 'gzip, deflate']);
  }
  return h;
}

