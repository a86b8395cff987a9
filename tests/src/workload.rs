//! A deterministic, varied set of request lines (the `signalbox eval` format) for benchmarks:
//! browsers old and new, automation, declared crawlers, headless Chrome, empty and non-UTF-8
//! User-Agents, client hints, edge headers, forged clearance cookies, sensitive routes, IPv4
//! and IPv6 clients on ISP, hosting and crawler ranges.
//!
//! Client addresses vary in their low bits, so a few thousand requests replayed for a few
//! dozen rounds stay within per-IP rate budgets (the default bundle allows 300 per minute,
//! 10 on `/login`) and measure evaluations rather than throttling.

use serde_json::{Value, json};

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Linux; Android 7.0; SM-G930F Build/NRD90M) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 Mobile Safari/537.36 Puffin/7.1.2.18064AP",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Go-http-client/2.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "",
];

/// Address prefixes the low bits are appended to: a Swiss ISP, DigitalOcean, AWS, Googlebot,
/// documentation ranges (which the golden bundle lists), and IPv6 ISP / Google / hosting.
const IPV4_PREFIXES: &[[u8; 3]] = &[
    [81, 62, 10],
    [81, 62, 33],
    [167, 99, 134],
    [3, 5, 140],
    [66, 249, 66],
    [2, 26, 97],
    [198, 51, 100],
    [192, 0, 2],
    [203, 0, 113],
];
const IPV6_PREFIXES: &[&str] = &[
    "2001:4860:4801:10::",
    "2a03:b0c0:3:d0::",
    "2a02:1210:2c00::",
];

const PATHS: &[&str] = &[
    "/",
    "/",
    "/products/42",
    "/products/1337?ref=home",
    "/search?q=shoes",
    "/signup",
    "/login",
    "/checkout?step=2",
    "/LOGIN/x",
    "//%6Cogin",
    "/static/app.js",
];

/// A linear congruential generator: the same requests on every machine and every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(self.0 >> 33).unwrap_or(0) % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }
}

/// `n` request lines (`id` `w0`, `w1`, …).
pub fn requests(n: usize) -> Vec<Value> {
    let mut rng = Lcg(0x5167_0a1b_0c5e_ed00);
    (0..n).map(|i| request(i, &mut rng)).collect()
}

/// The lines as JSONL text.
pub fn jsonl(lines: &[Value]) -> String {
    let mut text = String::new();
    for line in lines {
        text.push_str(&line.to_string());
        text.push('\n');
    }
    text
}

fn client_ip(rng: &mut Lcg) -> String {
    if rng.below(5) == 0 {
        let prefix = rng.pick(IPV6_PREFIXES).copied().unwrap_or("2001:db8::");
        format!("{prefix}{:x}", rng.below(0xffff) + 1)
    } else {
        let [a, b, c] = rng.pick(IPV4_PREFIXES).copied().unwrap_or([192, 0, 2]);
        format!("{a}.{b}.{c}.{}", rng.below(254) + 1)
    }
}

fn request(i: usize, rng: &mut Lcg) -> Value {
    let mut headers = vec![json!(["host", "shop.example"])];
    let ua = rng.pick(USER_AGENTS).copied().unwrap_or_default();
    if !ua.is_empty() || rng.below(2) == 0 {
        headers.push(json!(["user-agent", ua]));
    }
    if rng.below(2) == 0 {
        headers.push(json!([
            "accept",
            "text/html,application/xhtml+xml,*/*;q=0.8"
        ]));
    }
    match rng.below(3) {
        0 => headers.push(json!(["accept-language", "fr-CH, fr;q=0.9, en;q=0.8"])),
        1 => headers.push(json!(["accept-language", ""])),
        _ => {}
    }
    if rng.below(2) == 0 {
        headers.push(json!(["accept-encoding", "gzip, deflate, br, zstd"]));
    }
    if rng.below(2) == 0 {
        headers.push(json!(["sec-fetch-mode", "navigate"]));
        headers.push(json!(["sec-fetch-site", "same-origin"]));
    }
    match rng.below(4) {
        0 => headers.push(json!([
            "sec-ch-ua",
            "\"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\""
        ])),
        1 => headers.push(json!(["sec-ch-ua-platform", "\"Windows\""])),
        _ => {}
    }
    match rng.below(6) {
        0 => headers.push(json!(["cf-ipcountry", "KP"])),
        1 => headers.push(json!(["cf-ipcountry", "CH"])),
        2 => headers.push(json!(["x-signalbox-edge-asn", "AS14061"])),
        3 => headers.push(json!([
            "x-signalbox-edge-ja4",
            "t13d1516h2_8daaf6152771_02713d6af862"
        ])),
        4 => headers.push(json!([
            "cookie",
            "session=abc123; __Host-signalbox-clearance=forged"
        ])),
        _ => {}
    }
    if rng.below(12) == 0 {
        headers.push(json!(["user-agent", [255, 254, 77, 200]]));
    }
    let method = rng.pick(&["GET", "GET", "POST", "HEAD"]).copied();
    let mut line = serde_json::Map::new();
    line.insert("id".into(), json!(format!("w{i}")));
    line.insert("method".into(), json!(method.unwrap_or("GET")));
    line.insert(
        "path".into(),
        json!(rng.pick(PATHS).copied().unwrap_or("/")),
    );
    line.insert("headers".into(), Value::Array(headers));
    line.insert("client_ip".into(), json!(client_ip(rng)));
    if rng.below(4) == 0 {
        line.insert("user".into(), json!(format!("user-{}", rng.below(500))));
    }
    Value::Object(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let (a, b) = (requests(500), requests(500));
        assert_eq!(a, b);
        let ips: std::collections::BTreeSet<_> =
            a.iter().map(|l| l["client_ip"].to_string()).collect();
        assert!(ips.len() > 300, "{} distinct addresses", ips.len());
        assert_eq!(jsonl(&a).lines().count(), 500);
    }
}
