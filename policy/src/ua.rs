//! Just enough User-Agent parsing for risk signals: browser family, major version, platform
//! and mobile flag, plus the client-hint consistency check.
//!
//! Works on raw bytes: a header value need not be UTF-8. Token lists (automation, headless,
//! crawlers) are matched elsewhere with Aho-Corasick; this module only reads the browser
//! product tokens, in the order browsers stack them (Edge and Opera also say `Chrome/`,
//! Chrome also says `Safari/`).

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
            BrowserFamily::Chrome | BrowserFamily::Edge | BrowserFamily::Opera | BrowserFamily::Samsung
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
}

/// Parses a browser User-Agent. Returns `None` for anything that is not a `Mozilla/5.0`
/// browser string with a known product token.
pub fn parse_browser(ua: &[u8]) -> Option<Browser> {
    if !ua.starts_with(b"Mozilla/5.0") {
        return None;
    }
    const PRODUCTS: [(&[u8], BrowserFamily); 10] = [
        (b"Edg/", BrowserFamily::Edge),
        (b"EdgA/", BrowserFamily::Edge),
        (b"EdgiOS/", BrowserFamily::Edge),
        (b"OPR/", BrowserFamily::Opera),
        (b"SamsungBrowser/", BrowserFamily::Samsung),
        (b"Firefox/", BrowserFamily::Firefox),
        (b"FxiOS/", BrowserFamily::Firefox),
        (b"CriOS/", BrowserFamily::Chrome),
        (b"Chrome/", BrowserFamily::Chrome),
        (b"Version/", BrowserFamily::Safari),
    ];
    let (family, major) = PRODUCTS.iter().find_map(|&(token, family)| {
        let at = find(ua, token)?;
        if family == BrowserFamily::Safari && find(ua, b"Safari/").is_none() {
            return None;
        }
        let major = leading_number(ua.get(at + token.len()..)?)?;
        Some((family, major))
    })?;
    Some(Browser { family, major, platform: ua_platform(ua), mobile: find(ua, b"Mobile").is_some() })
}

fn ua_platform(ua: &[u8]) -> Option<Platform> {
    // Order matters: Android UAs say "Linux", iOS UAs say "like Mac OS X".
    const PLATFORMS: [(&[u8], Platform); 7] = [
        (b"Android", Platform::Android),
        (b"iPhone", Platform::Ios),
        (b"iPad", Platform::Ios),
        (b"Windows", Platform::Windows),
        (b"CrOS", Platform::ChromeOs),
        (b"Macintosh", Platform::MacOs),
        (b"Linux", Platform::Linux),
    ];
    PLATFORMS.iter().find(|(token, _)| find(ua, token).is_some()).map(|&(_, p)| p)
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
    if let (Some(platform), Some(ua_platform)) = (sec_ch_ua_platform, browser.platform) {
        if let Some(hint) = hint_platform(platform) {
            if hint != ua_platform {
                return true;
            }
        }
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
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn leading_number(bytes: &[u8]) -> Option<u32> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).take(9);
    let mut value: u32 = 0;
    let mut any = false;
    for &d in digits {
        value = value.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
        any = true;
    }
    any.then_some(value)
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
        assert_eq!((b.family, b.major, b.platform, b.mobile), (BrowserFamily::Chrome, 131, Some(Platform::MacOs), false));
        let b = parse_browser(PUFFIN).unwrap();
        assert_eq!((b.family, b.major, b.platform, b.mobile), (BrowserFamily::Chrome, 42, Some(Platform::Android), true));
        let edge = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.2849.80";
        assert_eq!(parse_browser(edge).unwrap().family, BrowserFamily::Edge);
        let ff = b"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
        let b = parse_browser(ff).unwrap();
        assert_eq!((b.family, b.major, b.platform), (BrowserFamily::Firefox, 133, Some(Platform::Linux)));
        let safari = b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
        let b = parse_browser(safari).unwrap();
        assert_eq!((b.family, b.major, b.platform), (BrowserFamily::Safari, 17, Some(Platform::Ios)));
    }

    #[test]
    fn non_browsers_are_none() {
        assert!(parse_browser(b"curl/8.5.0").is_none());
        assert!(parse_browser(b"Mozilla/5.0").is_none());
        assert!(parse_browser(b"Mozilla/5.0 Chrome/").is_none());
        assert!(parse_browser(b"Mozilla/5.0 Chrome/99999999999999").is_none());
        assert!(parse_browser(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn client_hints() {
        let b = parse_browser(CHROME_MAC).unwrap();
        let good = br#""Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24""#;
        assert!(!client_hints_contradict(&b, Some(good), Some(b"?0"), Some(b"\"macOS\"")));
        assert!(!client_hints_contradict(&b, None, None, None));
        let other_version = br#""Chromium";v="120""#;
        assert!(client_hints_contradict(&b, Some(other_version), None, None));
        assert!(client_hints_contradict(&b, Some(good), Some(b"?1"), None));
        assert!(client_hints_contradict(&b, Some(good), None, Some(b"\"Windows\"")));
        let ff = parse_browser(b"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0").unwrap();
        assert!(client_hints_contradict(&ff, Some(good), None, None));
    }
}
