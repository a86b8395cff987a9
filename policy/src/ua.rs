//! Just enough User-Agent parsing for risk signals: browser family, major version, platform
//! and mobile flag, plus the client-hint consistency check.
//!
//! Works on raw bytes: a header value need not be UTF-8. One Aho-Corasick pass finds the
//! bundle's tokens (crawlers, headless, automation) and the browser product and platform
//! tokens; products are then read in the order browsers stack them (Edge and Opera also say
//! `Chrome/`, Chrome also says `Safari/`).

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

/// Browser families the bundle can set minimum versions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BrowserFamily {
    /// Google Chrome and Chromium.
    Chrome,
    /// Microsoft Edge (Chromium).
    Edge,
    /// Mozilla Firefox.
    Firefox,
    /// Apple Safari.
    Safari,
    /// Opera (Chromium).
    Opera,
    /// Samsung Internet (Chromium).
    Samsung,
}

impl BrowserFamily {
    /// All families, in bundle-key order.
    pub const ALL: [BrowserFamily; 6] = [
        BrowserFamily::Chrome,
        BrowserFamily::Edge,
        BrowserFamily::Firefox,
        BrowserFamily::Safari,
        BrowserFamily::Opera,
        BrowserFamily::Samsung,
    ];

    /// The bundle key of the family.
    pub fn as_str(self) -> &'static str {
        match self {
            BrowserFamily::Chrome => "chrome",
            BrowserFamily::Edge => "edge",
            BrowserFamily::Firefox => "firefox",
            BrowserFamily::Safari => "safari",
            BrowserFamily::Opera => "opera",
            BrowserFamily::Samsung => "samsung",
        }
    }

    /// Parses a bundle key.
    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == key)
    }

    fn is_chromium(self) -> bool {
        matches!(
            self,
            BrowserFamily::Chrome
                | BrowserFamily::Edge
                | BrowserFamily::Opera
                | BrowserFamily::Samsung
        )
    }

    /// Whether this family and version always sends `sec-fetch-*` request headers
    /// (Chromium 80+, Firefox 90+, Safari 17+; in secure contexts).
    pub fn sends_sec_fetch(self, major: u32) -> bool {
        match self {
            BrowserFamily::Chrome | BrowserFamily::Edge => major >= 80,
            BrowserFamily::Firefox => major >= 90,
            BrowserFamily::Safari => major >= 17,
            BrowserFamily::Opera | BrowserFamily::Samsung => false,
        }
    }
}

/// Operating system as the User-Agent or `sec-ch-ua-platform` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Windows.
    Windows,
    /// macOS.
    MacOs,
    /// Android.
    Android,
    /// iOS and iPadOS.
    Ios,
    /// ChromeOS.
    ChromeOs,
    /// Desktop Linux.
    Linux,
}

/// What a browser User-Agent says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Browser {
    /// Family.
    pub family: BrowserFamily,
    /// Major version.
    pub major: u32,
    /// Platform, if named.
    pub platform: Option<Platform>,
    /// Says `Mobile`.
    pub mobile: bool,
    /// The major of its `Chrome/` token, for Chromium browsers that carry one (iOS browsers
    /// are WebKit and carry none).
    pub chromium_major: Option<u32>,
    /// An app's web view: on iOS one that names no browser (`GSA/`, in-app browsers), on
    /// Android one that says `; wv)`. The app configures it (Android's sends client hints
    /// only from 116 and only with its default User-Agent), so which headers it sends is not
    /// known from its version.
    pub web_view: bool,
}

impl Browser {
    /// Whether this browser sends `sec-fetch-*` on secure requests. On iOS every browser is
    /// WebKit, so only Safari's own version says (other iOS browsers version their app).
    pub fn sends_sec_fetch(&self) -> bool {
        if self.web_view
            || (self.platform == Some(Platform::Ios) && self.family != BrowserFamily::Safari)
        {
            return false;
        }
        self.family.sends_sec_fetch(self.major)
    }

    /// Whether this browser sends `sec-ch-ua` client hints on secure requests: Chrome, Edge
    /// and Opera from Chromium 89, except on iOS (WebKit). Samsung Internet is left out: its
    /// client-hint support by version is not documented well enough to score its absence.
    pub fn sends_client_hints(&self) -> bool {
        matches!(
            self.family,
            BrowserFamily::Chrome | BrowserFamily::Edge | BrowserFamily::Opera
        ) && self.platform != Some(Platform::Ios)
            && self.chromium_major.is_some_and(|m| m >= 89)
            && !self.web_view
    }
}

/// Browser product tokens, in the order browsers stack them: the first found wins.
const PRODUCTS: [(&str, BrowserFamily); 10] = [
    ("Edg/", BrowserFamily::Edge),
    ("EdgA/", BrowserFamily::Edge),
    ("EdgiOS/", BrowserFamily::Edge),
    ("OPR/", BrowserFamily::Opera),
    ("SamsungBrowser/", BrowserFamily::Samsung),
    ("Firefox/", BrowserFamily::Firefox),
    ("FxiOS/", BrowserFamily::Firefox),
    ("CriOS/", BrowserFamily::Chrome),
    ("Chrome/", BrowserFamily::Chrome),
    ("Version/", BrowserFamily::Safari),
];

/// Platform tokens; the first found wins (Android UAs say "Linux", iOS UAs "Mac OS X").
const PLATFORMS: [(&str, Platform); 7] = [
    ("Android", Platform::Android),
    ("iPhone", Platform::Ios),
    ("iPad", Platform::Ios),
    ("Windows", Platform::Windows),
    ("CrOS", Platform::ChromeOs),
    ("Macintosh", Platform::MacOs),
    ("Linux", Platform::Linux),
];

/// A declared-bot pattern, compiled: a token and where it may stand (see
/// `wire::BotPatternV1`). Tokens and context literals are matched ASCII case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BotPattern {
    /// The literal.
    pub token: String,
    /// Only at byte 0.
    pub at_start: bool,
    /// Only after a byte that is not an ASCII letter or digit (or at the start).
    pub word_start: bool,
    /// Only before a byte that is not an ASCII letter or digit (or at the end).
    pub word_end: bool,
    /// Only before an ASCII digit.
    pub digit_after: bool,
    /// Not right after any of these.
    pub not_preceded_by: Vec<String>,
    /// Not right before any of these.
    pub not_followed_by: Vec<String>,
}

impl BotPattern {
    /// Whether the token found at `start..end` of `ua` stands where the pattern allows.
    fn holds(&self, ua: &[u8], start: usize, end: usize) -> bool {
        let before = start.checked_sub(1).and_then(|i| ua.get(i));
        let after = ua.get(end);
        let head = ua.get(..start).unwrap_or_default();
        let tail = ua.get(end..).unwrap_or_default();
        (!self.at_start || start == 0)
            && (!self.word_start || before.is_none_or(|b| !b.is_ascii_alphanumeric()))
            && (!self.word_end || after.is_none_or(|b| !b.is_ascii_alphanumeric()))
            && (!self.digit_after || after.is_some_and(u8::is_ascii_digit))
            && !self.not_preceded_by.iter().any(|p| {
                head.len() >= p.len()
                    && head
                        .get(head.len() - p.len()..)
                        .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes()))
            })
            && !self.not_followed_by.iter().any(|p| {
                tail.get(..p.len())
                    .is_some_and(|t| t.eq_ignore_ascii_case(p.as_bytes()))
            })
    }
}

#[derive(Debug, Clone, Copy)]
enum Token {
    Crawler(usize),
    Declared(usize),
    Headless,
    Automation,
    Product(usize),
    Platform(usize),
    Mobile,
    Safari,
}

/// Everything one pass over a User-Agent found.
#[derive(Debug, Clone, Default)]
pub struct UaScan {
    /// The declared crawler with the lowest catalogue index, if any.
    pub crawler: Option<usize>,
    /// A declared-bot pattern matched where it may stand.
    pub declared: bool,
    /// A headless-browser token matched.
    pub headless: bool,
    /// An automation token matched.
    pub automation: bool,
    product_end: [Option<usize>; PRODUCTS.len()],
    platform: Option<usize>,
    mobile: bool,
    safari: bool,
}

/// Finds every bundle token (crawlers, headless, automation) and every browser token in one
/// pass of an Aho-Corasick DFA (ASCII case-insensitive) over the User-Agent.
#[derive(Debug, Clone)]
pub struct UaScanner {
    matcher: AhoCorasick,
    tokens: Vec<Token>,
    declared: Vec<BotPattern>,
}

impl UaScanner {
    /// Builds a scanner. `crawlers` pairs each token with its crawler's catalogue index;
    /// `declared` are declared-bot patterns outside the catalogue. `quick_build` builds a
    /// contiguous NFA (about 2.5 times faster to build, slower scans) instead of a DFA.
    pub fn new(
        crawlers: &[(String, usize)],
        declared: Vec<BotPattern>,
        headless: &[String],
        automation: &[String],
        quick_build: bool,
    ) -> Result<Self, aho_corasick::BuildError> {
        fn add<'a>(patterns: &mut Vec<&'a str>, tokens: &mut Vec<Token>, p: &'a str, t: Token) {
            if !p.is_empty() {
                patterns.push(p);
                tokens.push(t);
            }
        }
        let (mut patterns, mut tokens) = (Vec::new(), Vec::new());
        for (p, crawler) in crawlers {
            add(&mut patterns, &mut tokens, p, Token::Crawler(*crawler));
        }
        for (i, p) in declared.iter().enumerate() {
            add(&mut patterns, &mut tokens, &p.token, Token::Declared(i));
        }
        for p in headless {
            add(&mut patterns, &mut tokens, p, Token::Headless);
        }
        for p in automation {
            add(&mut patterns, &mut tokens, p, Token::Automation);
        }
        for (i, (p, _)) in PRODUCTS.iter().enumerate() {
            add(&mut patterns, &mut tokens, p, Token::Product(i));
        }
        for (i, (p, _)) in PLATFORMS.iter().enumerate() {
            add(&mut patterns, &mut tokens, p, Token::Platform(i));
        }
        add(&mut patterns, &mut tokens, "Mobile", Token::Mobile);
        add(&mut patterns, &mut tokens, "Safari/", Token::Safari);
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(if quick_build {
                AhoCorasickKind::ContiguousNFA
            } else {
                AhoCorasickKind::DFA
            }))
            .build(&patterns)?;
        Ok(Self {
            matcher,
            tokens,
            declared,
        })
    }

    /// One pass over the User-Agent.
    pub fn scan(&self, ua: &[u8]) -> UaScan {
        let mut scan = UaScan::default();
        for m in self.matcher.find_overlapping_iter(ua) {
            match self.tokens.get(m.pattern().as_usize()) {
                Some(Token::Crawler(c)) => {
                    scan.crawler = Some(scan.crawler.map_or(*c, |prev| prev.min(*c)));
                }
                Some(Token::Declared(i))
                    if !scan.declared
                        && self
                            .declared
                            .get(*i)
                            .is_some_and(|p| p.holds(ua, m.start(), m.end())) =>
                {
                    scan.declared = true;
                }
                Some(Token::Declared(_)) => {}
                Some(Token::Headless) => scan.headless = true,
                Some(Token::Automation) => scan.automation = true,
                Some(Token::Product(i)) => {
                    if let Some(slot) = scan.product_end.get_mut(*i) {
                        slot.get_or_insert(m.end());
                    }
                }
                Some(Token::Platform(i)) => {
                    scan.platform = Some(scan.platform.map_or(*i, |prev| prev.min(*i)));
                }
                Some(Token::Mobile) => scan.mobile = true,
                Some(Token::Safari) => scan.safari = true,
                None => {}
            }
        }
        scan
    }
}

impl UaScan {
    /// The browser a `Mozilla/5.0` User-Agent claims to be, if it names a known product.
    pub fn browser(&self, ua: &[u8]) -> Option<Browser> {
        if !ua.starts_with(b"Mozilla/5.0") {
            return None;
        }
        let platform = self
            .platform
            .and_then(|i| PLATFORMS.get(i))
            .map(|&(_, p)| p);
        let (family, major, web_view) = PRODUCTS
            .iter()
            .zip(self.product_end)
            .find_map(|(&(_, family), end)| {
                if family == BrowserFamily::Safari && !self.safari {
                    return None;
                }
                Some((family, leading_number(ua.get(end?..)?)?, false))
            })
            .or_else(|| {
                // An iOS app's web view (the Google app's `GSA/`, in-app browsers) names no
                // browser product: it is the system WebKit, versioned with iOS.
                if platform != Some(Platform::Ios) {
                    return None;
                }
                find(ua, b"AppleWebKit/")?;
                let os = find(ua, b" OS ")?;
                Some((
                    BrowserFamily::Safari,
                    leading_number(ua.get(os + 4..)?)?,
                    true,
                ))
            })?;
        let chromium_major = PRODUCTS
            .iter()
            .position(|&(token, _)| token == "Chrome/")
            .and_then(|i| self.product_end.get(i).copied().flatten())
            .and_then(|end| leading_number(ua.get(end..)?));
        // Android's WebView sends client hints from 116, and only with its default User-Agent
        // (an app that appends to it, like an in-app browser, gets none): only that one is
        // held to Chrome's headers.
        let default_android_web_view = chromium_major.is_some_and(|m| m >= 116)
            && ua.trim_ascii_end().ends_with(b"Safari/537.36");
        Some(Browser {
            family,
            major,
            platform,
            mobile: self.mobile,
            chromium_major,
            web_view: web_view || (find(ua, b"; wv)").is_some() && !default_android_web_view),
        })
    }
}

/// Parses a browser User-Agent on its own (builds a scanner: for tools and tests; the engine
/// keeps one per policy). Returns `None` for anything that is not a `Mozilla/5.0` browser
/// string with a known product token.
pub fn parse_browser(ua: &[u8]) -> Option<Browser> {
    UaScanner::new(&[], Vec::new(), &[], &[], false)
        .ok()?
        .scan(ua)
        .browser(ua)
}

/// Whether `sec-ch-ua`, `sec-ch-ua-mobile` and `sec-ch-ua-platform` contradict the UA.
///
/// Contradictions: any client hint from a family that does not send them (Firefox, Safari);
/// a brand version that differs from the UA's major; a mobile flag or platform that differs.
/// Absent hints are no contradiction (they are only sent over HTTPS).
pub fn client_hints_contradict(
    browser: &Browser,
    sec_ch_ua: Option<&[u8]>,
    sec_ch_ua_mobile: Option<&[u8]>,
    sec_ch_ua_platform: Option<&[u8]>,
) -> bool {
    if sec_ch_ua.is_none() && sec_ch_ua_mobile.is_none() && sec_ch_ua_platform.is_none() {
        return false;
    }
    if !browser.family.is_chromium() {
        return true;
    }
    // A brand list always names brands with versions (`"Chromium";v="131"`).
    if sec_ch_ua.is_some_and(|brands| find(brands, b";v=\"").is_none()) {
        return true;
    }
    if let Some(brands) = sec_ch_ua {
        let brand = match browser.family {
            BrowserFamily::Edge => &b"\"Microsoft Edge\""[..],
            BrowserFamily::Opera => b"\"Opera\"",
            _ => b"\"Chromium\"",
        };
        if let Some(version) = brand_major(brands, brand) {
            // Opera and Samsung version their own brand; Chromium's major is what Chrome says.
            let comparable = matches!(browser.family, BrowserFamily::Chrome | BrowserFamily::Edge)
                || brand != b"\"Chromium\"";
            if comparable && version != browser.major {
                return true;
            }
        }
    }
    if let Some(mobile) = sec_ch_ua_mobile {
        let hint_mobile = trim(mobile) == b"?1";
        if hint_mobile != browser.mobile {
            return true;
        }
    }
    if let (Some(platform), Some(ua_platform)) = (sec_ch_ua_platform, browser.platform)
        && let Some(hint) = hint_platform(platform)
        && hint != ua_platform
    {
        return true;
    }
    false
}

fn brand_major(brands: &[u8], brand: &[u8]) -> Option<u32> {
    let at = find(brands, brand)?;
    let rest = brands.get(at + brand.len()..)?;
    let v = find(rest, b"v=\"")?;
    leading_number(rest.get(v + 3..)?)
}

fn hint_platform(value: &[u8]) -> Option<Platform> {
    let v = trim(value);
    let v = v.strip_prefix(b"\"").unwrap_or(v);
    let v = v.strip_suffix(b"\"").unwrap_or(v);
    Some(match v {
        b"Windows" => Platform::Windows,
        b"macOS" => Platform::MacOs,
        b"Android" => Platform::Android,
        b"iOS" => Platform::Ios,
        b"Chrome OS" | b"ChromeOS" => Platform::ChromeOs,
        b"Linux" => Platform::Linux,
        _ => return None,
    })
}

/// Byte-string search (first occurrence).
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

fn leading_number(bytes: &[u8]) -> Option<u32> {
    // A version major has at most 6 digits; anything longer is not a real browser.
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if !(1..=6).contains(&digits) {
        return None;
    }
    std::str::from_utf8(bytes.get(..digits)?).ok()?.parse().ok()
}

pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_MAC: &[u8] = b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    const PUFFIN: &[u8] = b"Mozilla/5.0 (Linux; Android 7.0; SM-G930F Build/NRD90M) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 Mobile Safari/537.36 Puffin/7.1.2.18064AP";

    #[test]
    fn parses_common_browsers() {
        let b = parse_browser(CHROME_MAC).unwrap();
        assert_eq!(
            (b.family, b.major, b.platform, b.mobile),
            (BrowserFamily::Chrome, 131, Some(Platform::MacOs), false)
        );
        let b = parse_browser(PUFFIN).unwrap();
        assert_eq!(
            (b.family, b.major, b.platform, b.mobile),
            (BrowserFamily::Chrome, 42, Some(Platform::Android), true)
        );
        let edge = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.2849.80";
        assert_eq!(parse_browser(edge).unwrap().family, BrowserFamily::Edge);
        let ff = b"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
        let b = parse_browser(ff).unwrap();
        assert_eq!(
            (b.family, b.major, b.platform),
            (BrowserFamily::Firefox, 133, Some(Platform::Linux))
        );
        let safari = b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
        let b = parse_browser(safari).unwrap();
        assert_eq!(
            (b.family, b.major, b.platform),
            (BrowserFamily::Safari, 17, Some(Platform::Ios))
        );
    }

    #[test]
    fn non_browsers_are_none() {
        assert!(parse_browser(b"curl/8.5.0").is_none());
        assert!(parse_browser(b"Mozilla/5.0").is_none());
        assert!(parse_browser(b"Mozilla/5.0 Chrome/").is_none());
        assert!(parse_browser(b"Mozilla/5.0 Chrome/99999999999999").is_none());
        assert!(parse_browser(&[0xff, 0xfe]).is_none());
    }

    fn declared(patterns: Vec<BotPattern>, ua: &[u8]) -> bool {
        UaScanner::new(&[], patterns, &[], &[], false)
            .unwrap()
            .scan(ua)
            .declared
    }

    fn pattern(token: &str) -> BotPattern {
        BotPattern {
            token: token.to_owned(),
            ..BotPattern::default()
        }
    }

    #[test]
    fn declared_patterns_stand_where_they_may() {
        // isbot's `(?<! cu)bots?(?:\b|_)`: a bot, but not the CUBOT phone brand.
        let bot = || BotPattern {
            word_end: true,
            not_preceded_by: vec![" cu".to_owned()],
            ..pattern("bot")
        };
        assert!(declared(
            vec![bot()],
            b"Mozilla/5.0 (compatible; MJ12bot/v1.4.8)"
        ));
        assert!(
            declared(vec![bot()], b"SomeBot_1"),
            "underscore is a boundary"
        );
        assert!(!declared(
            vec![bot()],
            b"Mozilla/5.0 (Linux; Android 9; CUBOT X19)"
        ));
        assert!(!declared(vec![bot()], b"Mozilla/5.0 botany/1"), "word end");
        // The first occurrence is excluded, a later one still counts.
        assert!(declared(vec![bot()], b"x CUBOT phone, robot"));
        let at_start = BotPattern {
            at_start: true,
            ..pattern("wget")
        };
        assert!(declared(vec![at_start.clone()], b"Wget/1.21"));
        assert!(!declared(vec![at_start], b"Mozilla/5.0 wget"));
        let words = BotPattern {
            word_start: true,
            word_end: true,
            ..pattern("perl")
        };
        assert!(declared(vec![words.clone()], b"libwww perl/6"));
        assert!(!declared(vec![words], b"superlative perlite"));
        let digit = BotPattern {
            digit_after: true,
            ..pattern("ptst/")
        };
        assert!(declared(vec![digit.clone()], b"Mozilla/5.0 PTST/240101"));
        assert!(!declared(vec![digit], b"Mozilla/5.0 PTST/x"));
        let google = BotPattern {
            not_preceded_by: vec![" channel/".to_owned(), "google/".to_owned()],
            not_followed_by: vec!["app".to_owned(), " pixel".to_owned()],
            ..pattern("google")
        };
        assert!(declared(
            vec![google.clone()],
            b"AdsBot-Google (+http://www.google.com)"
        ));
        assert!(!declared(vec![google.clone()], b"Mozilla/5.0 GoogleApp/1"));
        assert!(!declared(
            vec![google],
            b"Mozilla/5.0 (Linux; Android 14; Google Pixel 8)"
        ));
        // The same token twice with different conditions: either may match.
        let both = vec![
            BotPattern {
                at_start: true,
                ..pattern("bot")
            },
            bot(),
        ];
        assert!(declared(both.clone(), b"botify"));
        assert!(declared(both.clone(), b"x crawl bot"));
        assert!(!declared(both, b"x robotics"));
        // Never a panic on any bytes.
        assert!(!declared(vec![pattern("\u{e9}")], &[0xff, 0xfe, 0xc3]));
    }

    #[test]
    fn ios_web_views_are_webkit_by_ios_version() {
        let gsa = b"Mozilla/5.0 (iPhone; CPU iPhone OS 18_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) GSA/439.4.980558000 Mobile/15E148 Safari/604.1";
        let b = parse_browser(gsa).unwrap();
        assert_eq!(
            (b.family, b.major, b.platform),
            (BrowserFamily::Safari, 18, Some(Platform::Ios))
        );
        assert!(
            b.web_view && !b.sends_sec_fetch(),
            "an app configures its web view"
        );
        let crios = b"Mozilla/5.0 (iPhone; CPU iPhone OS 15_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1";
        let b = parse_browser(crios).unwrap();
        assert_eq!(b.family, BrowserFamily::Chrome);
        assert!(!b.sends_client_hints(), "Chrome on iOS is WebKit");
        assert!(!b.sends_sec_fetch(), "its WebKit is iOS 15's");
        let chrome = parse_browser(CHROME_MAC).unwrap();
        assert!(chrome.sends_client_hints() && chrome.sends_sec_fetch());
        let chrome88 = parse_browser(b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/88.0.4324.150 Safari/537.36").unwrap();
        assert!(!chrome88.sends_client_hints());
        let opera = parse_browser(b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0").unwrap();
        assert_eq!(
            (opera.family, opera.chromium_major),
            (BrowserFamily::Opera, Some(130))
        );
        assert!(opera.sends_client_hints());
    }

    #[test]
    fn client_hints() {
        let b = parse_browser(CHROME_MAC).unwrap();
        let good = br#""Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24""#;
        assert!(!client_hints_contradict(
            &b,
            Some(good),
            Some(b"?0"),
            Some(b"\"macOS\"")
        ));
        assert!(!client_hints_contradict(&b, None, None, None));
        let other_version = br#""Chromium";v="120""#;
        assert!(client_hints_contradict(&b, Some(other_version), None, None));
        assert!(
            client_hints_contradict(&b, Some(b"x"), None, None),
            "not a brand list"
        );
        let wv = parse_browser(b"Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/110.0.5481.153 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/400.0.0.0;]").unwrap();
        assert!(
            wv.web_view && !wv.sends_client_hints(),
            "Android WebView: hints only from 116, default UA"
        );
        assert!(client_hints_contradict(&b, Some(good), Some(b"?1"), None));
        assert!(client_hints_contradict(
            &b,
            Some(good),
            None,
            Some(b"\"Windows\"")
        ));
        let ff = parse_browser(
            b"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        )
        .unwrap();
        assert!(client_hints_contradict(&ff, Some(good), None, None));
    }
}
