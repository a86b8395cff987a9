#!/usr/bin/env python3
"""Regenerate the IP lists of the default policy bundle (policy/examples/lists/*.json).

Data source: the PyPI package ``iporigin`` (pinned below, wheel checked by SHA-256).
The script never imports or runs iporigin's code: it downloads the wheel with pip
(``pip download --no-deps --require-hashes``, i.e. from the package registry only),
opens it with ``zipfile`` and decodes the packed table ``iporigin/data/ranges.bin``
itself. Nothing else touches the network.

Usage (Python 3.11+, stdlib only; needs ``python -m pip`` for the one download):

    python3 policy/data/refresh.py                 # write policy/examples/lists/*.json
    python3 policy/data/refresh.py --check         # exit 1 if the files on disk differ
    python3 policy/data/refresh.py --wheel FILE    # use an already-downloaded wheel
    python3 policy/data/refresh.py --bing-json bingbot.json --google-json googlebot.json
    python3 policy/data/refresh.py --crawler-file gptbot=gptbot.json

The wheel is cached in --cache-dir (default $SIGNALBOX_DATA_CACHE, else
~/.cache/signalbox/policy-data). Output is deterministic: every list is sorted
(IPv4 then IPv6, by address), deduplicated and aggregated into the smallest exact
set of CIDRs (no address is added or dropped by aggregation).

--google-json / --bing-json / --crawler-file NAME=FILE take a crawler-range file the
operator fetched from the provider (Google/Bing/OpenAI/Apple style JSON with
"creationTime" and "prefixes": [{"ipv4Prefix"|"ipv6Prefix": ...}], or plain text,
one CIDR per line). The file replaces that crawler's list from iporigin, and its
creationTime (else the file's modification date) becomes the list's as_of.

To move to a newer iporigin: change PACKAGE_VERSION / WHEEL_SHA256 / RANGES_SHA256,
re-read its NOTICE (tools/sources.py in the sdist says which label came from which
upstream), and classify any new label below: the script refuses to run while the
dataset holds a label it does not know.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "iporigin"
PACKAGE_VERSION = "1.1.2"
WHEEL_NAME = "iporigin-1.1.2-py3-none-any.whl"
WHEEL_SHA256 = "814efc15b14d568d65887559fc6a5dfb2677ab0b063e2b39d9ae3192f9bc6802"
RANGES_MEMBER = "iporigin/data/ranges.bin"
RANGES_SHA256 = "509c4599801cdef4dcbde3568f22eeadeb850cdcd9ee825d2528d6842b95e9d4"

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "policy" / "examples" / "lists"

# Upstream of each iporigin label, as its tools/sources.py and NOTICE state them.
PROVIDER_FEED = "provider-published feed, no licence stated (factual data)"
REZMOSS = "rezmoss/cloud-provider-ip-addresses (CC0-1.0)"
LORD_ALFRED = "lord-alfred/ipranges (CC0-1.0)"

# list name -> {iporigin label: upstream}.  Only these labels are ever emitted.
LISTS: dict[str, dict[str, str]] = {
    "hosting": {
        "Amazon AWS": PROVIDER_FEED,
        "Google Cloud": PROVIDER_FEED,
        "Microsoft Azure": PROVIDER_FEED,
        "DigitalOcean": PROVIDER_FEED,
        "Linode": PROVIDER_FEED,
        "Vultr": PROVIDER_FEED,
        "Oracle Cloud": PROVIDER_FEED,
        "GitHub": PROVIDER_FEED,
        "Hetzner": REZMOSS,
        "OVHcloud": REZMOSS,
        "Scaleway": REZMOSS,
        "Alibaba Cloud": REZMOSS,
        "Leaseweb": REZMOSS,
        "UpCloud": REZMOSS,
        "IBM Cloud": REZMOSS,
        "Huawei Cloud": REZMOSS,
        "Tencent Cloud": REZMOSS,
        "Rackspace": REZMOSS,
    },
    "tor": {"Tor": REZMOSS},
    "vpn": {"Mullvad": REZMOSS, "ProtonVPN": LORD_ALFRED},
    "apple-private-relay": {"Apple Private Relay": REZMOSS},
    "googlebot": {"Googlebot": REZMOSS},
    "bingbot": {"Bingbot": REZMOSS},
    "applebot": {"Applebot": REZMOSS},
    "duckduckbot": {"DuckDuckBot": REZMOSS},
    "gptbot": {"GPTBot": REZMOSS},
    "claudebot": {"ClaudeBot": REZMOSS},
    "perplexitybot": {"PerplexityBot": REZMOSS},
    "amazonbot": {"Amazonbot": REZMOSS},
    "ccbot": {"Common Crawl": REZMOSS},
    "meta": {"Meta": REZMOSS},
    "internet-archive": {"Internet Archive": REZMOSS},
}

# Labels present in the dataset and deliberately NOT emitted, with the reason.
VERBAL_PERMISSION = (
    "upstream repository has no licence; iporigin's NOTICE claims only a verbal, "
    "undocumented permission (evidence '<to be added>'): redistribution licence unclear"
)
EXCLUDED: dict[str, str] = {
    # iporigin tier 3, '123jjck/cdn-ip-ranges' (no licence file).
    **{name: VERBAL_PERMISSION for name in (
        "Cogent", "DataCamp", "Contabo", "Vercel", "CDN77", "GleSYS", "Scalaxy",
        "GTHost", "Melbicom", "BuyVM", "BunnyCDN")},
    # CDN edges carry real users' traffic to other people's sites; also mixed with
    # the unlicensed SecOps-Institute list inside the same label.
    "Akamai": "cdn; label mixes CC0 rezmoss data with unlicensed SecOps-Institute "
              "data (verbal permission only), inseparable",
    "Cloudflare": "cdn (labelled separately by the source); fronts real users' traffic",
    "Fastly": "cdn (labelled separately by the source); fronts real users' traffic",
    "Gcore": "cdn (labelled separately by the source); fronts real users' traffic",
    "Google": "goog.json minus cloud.json: Google's own services (frontends, 8.8.8.8, "
              "user proxies/VPN egress), not rentable hosting; Google Cloud is kept",
}

CHECK_IN = {"hosting": ["167.99.134.20"], "bingbot": ["157.55.39.1", "40.77.167.1"]}  # must be listed
CHECK_OUT = {"hosting": ["81.62.10.4"]}            # must not (Swiss residential ISP)

# --- reading the packed table ------------------------------------------------------

_HEADER = struct.Struct("<8sHQHII")
_V4 = struct.Struct("<IIH")
_V6 = struct.Struct("<16s16sH")


def decode_ranges(blob: bytes):
    """Decode iporigin's ranges.bin (format v1, see its tools/build_dataset.py)."""
    magic, version, built_at, n_labels, n_v4, n_v6 = _HEADER.unpack_from(blob, 0)
    if magic != b"IPORIGIN" or version != 1:
        raise SystemExit("ranges.bin: unknown format (magic %r, version %d)" % (magic, version))
    off = _HEADER.size
    labels = []
    for _ in range(n_labels):
        (length,) = struct.unpack_from("<H", blob, off)
        off += 2
        provider, _, kind = blob[off:off + length].decode("utf-8").partition("\t")
        labels.append((provider, kind))
        off += length
    rows = []  # (family, start, end, provider)
    for _ in range(n_v4):
        start, end, label = _V4.unpack_from(blob, off)
        off += _V4.size
        rows.append((4, start, end, labels[label][0]))
    for _ in range(n_v6):
        start, end, label = _V6.unpack_from(blob, off)
        off += _V6.size
        rows.append((6, int.from_bytes(start, "big"), int.from_bytes(end, "big"),
                     labels[label][0]))
    if off != len(blob):
        raise SystemExit("ranges.bin: %d trailing bytes" % (len(blob) - off))
    built = dt.datetime.fromtimestamp(built_at, dt.timezone.utc)
    return built, labels, rows


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def obtain_wheel(args) -> Path:
    if args.wheel:
        path = Path(args.wheel)
    else:
        cache = Path(args.cache_dir or os.environ.get("SIGNALBOX_DATA_CACHE")
                     or Path.home() / ".cache" / "signalbox" / "policy-data")
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / WHEEL_NAME
        if not (path.exists() and sha256(path.read_bytes()) == WHEEL_SHA256):
            with tempfile.TemporaryDirectory() as tmp:
                req = Path(tmp) / "requirements.txt"
                req.write_text("%s==%s --hash=sha256:%s\n" % (PACKAGE, PACKAGE_VERSION, WHEEL_SHA256))
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--require-hashes", "-r", str(req), "-d", str(cache)]
                print("+ " + " ".join(cmd), file=sys.stderr)
                subprocess.run(cmd, check=True, stdout=sys.stderr)
    data = path.read_bytes()
    if sha256(data) != WHEEL_SHA256:
        raise SystemExit("%s: SHA-256 mismatch, expected %s==%s (%s)"
                         % (path, PACKAGE, PACKAGE_VERSION, WHEEL_SHA256))
    return path


# --- list building ----------------------------------------------------------------

def aggregate(intervals):
    """[(family, start, end)] -> sorted minimal exact CIDR strings."""
    out = []
    for family in (4, 6):
        cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        spans = sorted((s, e) for f, s, e in intervals if f == family)
        merged: list[list[int]] = []
        for s, e in spans:
            if merged and s <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        for s, e in merged:
            out.extend(str(n) for n in ipaddress.summarize_address_range(cls(s), cls(e)))
    return out


def non_global(intervals):
    """Drop (and report) anything in private/reserved/documentation space."""
    kept, dropped = [], []
    for family, s, e in intervals:
        cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        nets = ipaddress.summarize_address_range(cls(s), cls(e))
        if all(n.is_global for n in nets):
            kept.append((family, s, e))
        else:
            for n in ipaddress.summarize_address_range(cls(s), cls(e)):
                (kept.append((family, int(n.network_address), int(n.broadcast_address)))
                 if n.is_global else dropped.append(str(n)))
    return kept, dropped


def read_operator_file(path: Path):
    """Provider crawler-range file -> (intervals, as_of date string)."""
    text = path.read_text(encoding="utf-8")
    as_of = None
    prefixes = []
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for row in doc.get("prefixes", []):
            p = row.get("ipv4Prefix") or row.get("ipv6Prefix")
            if p:
                prefixes.append(p)
        created = doc.get("creationTime")
        if isinstance(created, str) and len(created) >= 10:
            as_of = dt.date.fromisoformat(created[:10]).isoformat()
    else:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                prefixes.append(line)
    if not prefixes:
        raise SystemExit("%s: no prefixes found" % path)
    if as_of is None:
        as_of = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).date().isoformat()
    intervals = []
    for p in prefixes:
        net = ipaddress.ip_network(p.strip(), strict=False)
        intervals.append((net.version, int(net.network_address), int(net.broadcast_address)))
    return intervals, as_of


def build(args):
    wheel = obtain_wheel(args)
    with zipfile.ZipFile(wheel) as zf:
        blob = zf.read(RANGES_MEMBER)
    if sha256(blob) != RANGES_SHA256:
        raise SystemExit("%s inside %s: SHA-256 mismatch" % (RANGES_MEMBER, wheel))
    built, labels, rows = decode_ranges(blob)
    as_of = built.date().isoformat()

    known = {name for labels_ in LISTS.values() for name in labels_} | set(EXCLUDED)
    unknown = sorted({p for p, _ in labels} - known)
    if unknown:
        raise SystemExit("dataset has labels not classified in refresh.py: %s" % ", ".join(unknown))

    operator = {}
    if args.google_json:
        operator["googlebot"] = Path(args.google_json)
    if args.bing_json:
        operator["bingbot"] = Path(args.bing_json)
    for item in args.crawler_file or []:
        name, _, file = item.partition("=")
        if name not in LISTS or name in ("hosting", "tor", "vpn", "apple-private-relay") or not file:
            raise SystemExit("--crawler-file wants CRAWLER=FILE with CRAWLER one of the crawler lists")
        operator[name] = Path(file)

    outputs = {}
    for name, members in LISTS.items():
        if name in operator:
            path = operator[name]
            intervals, list_as_of = read_operator_file(path)
            source = "operator-supplied provider file %s (replaces iporigin's %s)" % (
                path.name, ", ".join(members))
            licence = "provider-published crawler ranges, no licence stated (factual data)"
        else:
            intervals = [(f, s, e) for f, s, e, p in rows if p in members]
            list_as_of = as_of
            ups = sorted(set(members.values()))
            source = "PyPI %s==%s: %s (built %s), label%s %s; upstream: %s" % (
                PACKAGE, PACKAGE_VERSION, RANGES_MEMBER, built.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "s" if len(members) > 1 else "", ", ".join(members), "; ".join(ups))
            lic = []
            if REZMOSS in ups or LORD_ALFRED in ups:
                lic.append("CC0-1.0")
            if PROVIDER_FEED in ups:
                lic.append("provider-published feeds (no licence stated)")
            licence = " + ".join(lic) + "; packaged by iporigin (MIT)"
        intervals, dropped = non_global(intervals)
        if dropped:
            print("%s: dropped non-global %s" % (name, ", ".join(dropped)), file=sys.stderr)
        cidrs = aggregate(intervals)
        if name == "bingbot" and name not in operator:
            cidrs = with_prefixes(cidrs, BING_FLATTENED)
            source += "; plus the %d prefixes of Bing's bingbot.json that iporigin gave to " \
                      "Microsoft Azure (BING_FLATTENED in refresh.py)" % len(BING_FLATTENED)
        if not cidrs:
            raise SystemExit("%s: empty list" % name)
        outputs[name] = {"source": source, "licence": licence, "as_of": list_as_of, "cidrs": cidrs}
    sanity(outputs)
    return outputs


# Bing publishes 28 Bingbot prefixes (bing.com/toolbox/bingbot.json). iporigin's flattening
# gave these 10 to "Microsoft Azure", which overlaps them. They are facts from Bing's file,
# checked against the CC0 copy of it in lord-alfred/ipranges (bing/ipv4.txt, commit 5b723e1).
# `--bing-json` (Bing's own file) replaces the whole list instead.
BING_FLATTENED = [
    "40.77.139.0/25", "40.77.167.0/24", "40.77.177.0/24", "40.77.178.0/23", "40.77.188.0/22",
    "40.77.202.0/24", "65.55.210.0/24", "157.55.39.0/24", "199.30.24.0/23", "207.46.13.0/24",
]


def with_prefixes(cidrs, extra):
    """The CIDRs plus `extra`, collapsed and sorted as aggregate() sorts them."""
    nets = [ipaddress.ip_network(c) for c in list(cidrs) + list(extra)]
    v4 = ipaddress.collapse_addresses([n for n in nets if n.version == 4])
    v6 = ipaddress.collapse_addresses([n for n in nets if n.version == 6])
    return [str(n) for n in list(v4) + list(v6)]


def sanity(outputs):
    for name, doc in outputs.items():
        nets = [ipaddress.ip_network(c) for c in doc["cidrs"]]  # strict: host bits zero
        assert [str(n) for n in nets] == doc["cidrs"]
    for name, ips in CHECK_IN.items():
        nets = [ipaddress.ip_network(c) for c in outputs[name]["cidrs"]]
        for ip in ips:
            if not any(ipaddress.ip_address(ip) in n for n in nets):
                raise SystemExit("sanity: %s missing from %s" % (ip, name))
    for name, ips in CHECK_OUT.items():
        nets = [ipaddress.ip_network(c) for c in outputs[name]["cidrs"]]
        for ip in ips:
            if any(ipaddress.ip_address(ip) in n for n in nets):
                raise SystemExit("sanity: %s must not be in %s" % (ip, name))


def render(doc) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: %(default)s)")
    ap.add_argument("--cache-dir", help="where the pinned wheel is kept (env SIGNALBOX_DATA_CACHE)")
    ap.add_argument("--wheel", help="use this %s wheel instead of downloading it" % WHEEL_NAME)
    ap.add_argument("--google-json", help="Google's googlebot.json, replaces googlebot list")
    ap.add_argument("--bing-json", help="Bing's bingbot.json, replaces bingbot list")
    ap.add_argument("--crawler-file", action="append", metavar="NAME=FILE",
                    help="provider file for another crawler list (e.g. gptbot=gptbot.json)")
    ap.add_argument("--check", action="store_true", help="compare with files on disk, write nothing")
    args = ap.parse_args(argv)

    outputs = build(args)
    out = Path(args.out)
    stale = []
    for name, doc in outputs.items():
        path = out / ("%s.json" % name)
        text = render(doc)
        v4 = sum(1 for c in doc["cidrs"] if ":" not in c)
        print("%-22s %6d prefixes (%d v4, %d v6) as_of %s" % (
            path.name, len(doc["cidrs"]), v4, len(doc["cidrs"]) - v4, doc["as_of"]))
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date: %s" % ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
