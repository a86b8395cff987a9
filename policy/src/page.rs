//! The challenge as every adapter serves it: a small self-contained HTML page with the solver
//! script (no external resources, a CSP nonce, `cache-control: no-store`), and a JSON form for
//! API clients. Pure functions: the adapter supplies the challenge token and the nonce.

/// The solver script embedded in the page (`policy/assets/solver.js`).
pub const SOLVER_JS: &str = include_str!("../assets/solver.js");

/// What the page needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengePage<'a> {
    /// The challenge token (from [`crate::trust::issue_challenge`]).
    pub challenge: &'a str,
    /// Leading zero bits asked for.
    pub difficulty: u8,
    /// Where the solution is posted.
    pub verify_path: &'a str,
    /// Seconds the challenge stays valid.
    pub ttl_seconds: u32,
    /// A fresh random value for this response's Content-Security-Policy (base64 or hex).
    pub csp_nonce: &'a str,
}

/// Escapes text for HTML element content and quoted attributes (also the score cache's
/// dashboard's escaper).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl ChallengePage<'_> {
    /// The JSON form, for API clients: what to hash and where to post it.
    pub fn json(&self) -> String {
        serde_json::json!({
            "challenge": self.challenge,
            "algorithm": "sha256-leading-zero-bits",
            "input": "<challenge>:<counter in decimal>",
            "difficulty": self.difficulty,
            "verify_path": self.verify_path,
            "verify": "POST <verify_path>?challenge=<challenge>&counter=<counter> with an empty body (or the same fields as an application/x-www-form-urlencoded body)",
            "expires_in": self.ttl_seconds,
        })
        .to_string()
    }

    /// The HTML page. The configuration travels as JSON in a non-executable script element
    /// (with `<` escaped, so it cannot close the element).
    pub fn html(&self) -> String {
        let config =
            serde_json::json!({ "challenge": self.challenge, "difficulty": self.difficulty })
                .to_string()
                .replace('<', "\\u003c");
        let nonce = escape_html(self.csp_nonce);
        let action = escape_html(self.verify_path);
        format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>Checking your browser</title>
<style nonce="{nonce}">
body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:15vh auto;padding:0 1rem;color:#222}}
.muted{{color:#666;font-size:.875rem}}
</style>
</head>
<body>
<h1>Checking your browser</h1>
<div id="sb-working" hidden>
<p>This takes a moment and happens once. You will be sent on automatically.</p>
<p class="muted">Work done: <span id="sb-progress">0</span></p>
</div>
<noscript><p><strong>JavaScript is turned off.</strong> This check runs a short calculation in your browser: turn JavaScript on for this site and reload the page. Nothing is installed.</p></noscript>
<form id="sb-form" method="POST" action="{action}"></form>
<script type="application/json" id="sb-challenge" nonce="{nonce}">{config}</script>
<script nonce="{nonce}">
{SOLVER_JS}</script>
</body>
</html>
"#
        )
    }
}

/// Response headers for the HTML page.
pub fn html_headers(csp_nonce: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "text/html; charset=utf-8".to_owned()),
        ("cache-control", "no-store".to_owned()),
        (
            "content-security-policy",
            format!(
                "default-src 'none'; script-src 'nonce-{csp_nonce}'; style-src 'nonce-{csp_nonce}'; \
                 form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
            ),
        ),
        ("x-content-type-options", "nosniff".to_owned()),
        // `same-origin`: the form POST to the verify path carries the page's real origin.
        // Under `no-referrer` browsers send `Origin: null`, which the verify path refuses
        // (sandboxed frames and pages on other sites send it too).
        ("referrer-policy", "same-origin".to_owned()),
    ]
}

/// Response headers for the JSON form.
pub fn json_headers() -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".to_owned()),
        ("cache-control", "no-store".to_owned()),
        ("x-content-type-options", "nosniff".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> ChallengePage<'static> {
        ChallengePage {
            challenge: "AQJrMg.abc",
            difficulty: 12,
            verify_path: "/.signalbox/verify",
            ttl_seconds: 300,
            csp_nonce: "n0nce",
        }
    }

    #[test]
    fn page_is_self_contained_with_nonces() {
        let html = page().html();
        assert!(html.contains(r#"<script nonce="n0nce">"#));
        assert!(html.contains(r#"<style nonce="n0nce">"#));
        assert!(html.contains(r#"action="/.signalbox/verify""#));
        assert!(html.contains(r#""difficulty":12"#));
        for external in ["src=", "href=", "http://", "https://", "@import"] {
            assert!(!html.contains(external), "{external}");
        }
        let headers = html_headers("n0nce");
        assert!(
            headers
                .iter()
                .any(|(k, v)| *k == "referrer-policy" && v == "same-origin"),
            "the verify POST must carry the real Origin"
        );
        assert!(html.contains("<noscript>") && html.contains("turn JavaScript on"));
        let csp = &headers[2].1;
        assert!(csp.contains("script-src 'nonce-n0nce'") && csp.contains("default-src 'none'"));
        assert!(
            html_headers("x")
                .iter()
                .any(|(k, v)| *k == "cache-control" && v == "no-store")
        );
    }

    #[test]
    fn hostile_values_are_escaped() {
        let p = ChallengePage {
            challenge: "</script><b>",
            csp_nonce: "\"x",
            ..page()
        };
        let html = p.html();
        assert!(!html.contains("</script><b>"));
        assert!(!html.contains("nonce=\"\"x\""));
    }

    #[test]
    fn json_form() {
        let v: serde_json::Value = serde_json::from_str(&page().json()).unwrap();
        assert_eq!(v["difficulty"], 12);
        assert_eq!(v["verify_path"], "/.signalbox/verify");
        assert_eq!(json_headers()[1], ("cache-control", "no-store".to_owned()));
    }
}
