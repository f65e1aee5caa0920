# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Opt-out service of the torexit.hardening exit notice.

A visitor of the exit notice page presses a button, and this exit stops opening
new connections to the visitor's own address (or its /24 or /64) for a while.
The service only writes the egress guard's opt-out sets, see docs/guard-sets.md:
`inet torexit_guard` `optout_v4` / `optout_v6` of the nftables backend, or the
ipsets `torexit_optout_v4` / `torexit_optout_v6` of the iptables and ufw backends
(every one of them that exists, should a host hold both); the guard, or the
tor_exit role's ExitPolicy sync, does the refusing.

It listens on 127.0.0.1 behind nginx, which passes the visitor's address in
X-Real-IP (from $remote_addr, never from anything the visitor sends), the
origin the page was served from in X-Notice-Origin, and the page language in
X-Notice-Lang. Forms are protected by a token (HMAC of a secret held in memory,
a ten-minute time window and a per-browser nonce kept in a SameSite=Strict
cookie) and by an Origin check. Nothing is logged about visitors, and nothing
is written to disk: the limits below live in memory, keyed by keyed hashes.

Limits (in memory, rolling hour): attempts per visitor address and per IPv6
/64, so that one client cannot use up anybody else's chances; and new opt-outs
for all visitors together, which repeats and failures do not count towards.
The ban-visitors path (every page view opts the viewer out) goes through the
same address checks and limits. Addresses that are not global unicast -
private, CGNAT, loopback, link-local, multicast, reserved, documentation, ULA,
IPv4-mapped or -compatible, NAT64, 6to4, scoped - are refused.

Python standard library only; runs on python3 >= 3.8.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import html
import ipaddress
import re
import secrets
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

TABLE = "torexit_guard"
IPSET_PREFIX = "torexit_"
IPSET_MAX_TIMEOUT = 2147483  # ipset's limit for an element's timeout, in seconds (24.8 days)
WINDOW = 600  # seconds per token window; a form is valid for 10 to 20 minutes
COOKIE = "exit_notice_optout"
MAX_BODY = 4096
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{20,64}")
TOKEN_RE = re.compile(r"([0-9]{1,12})\.([0-9a-f]{64})")
PREFIXES = {4: (24, 32), 6: (64, 128)}

STRINGS = {
    "en": {
        "back": "Back to the notice",
        "confirm_title": "Stop this exit from connecting to your network",
        "confirm": "<p>This host sees you coming from <strong>{addr}</strong>. If you press "
                   "the button, this Tor exit will not open new connections to "
                   "<strong>{net}</strong> for {duration}.</p>"
                   "<p>Only the address you are visiting from can be opted out, so use "
                   "this page from the network that receives the unwanted traffic. The "
                   "block expires by itself; press the button again later if you need "
                   "it longer.</p>",
        "button": "Stop connections to {net} for {duration}",
        "done_title": "Done",
        "done": "<p>This exit will not open new connections to <strong>{net}</strong> "
                "until {until} UTC.</p>",
        "already": "<p>An opt-out for <strong>{net}</strong> is already in effect.</p>",
        "error_title": "Opt-out not possible",
        "unavailable": "<p>The opt-out is not available on this host right now: the egress "
                       "guard that enforces it is not installed or not running. Please "
                       "write to the abuse contact given on the notice page instead.</p>",
        "token": "<p>The form has expired, or your browser did not send it back as "
                 "expected. Go back, reload the page and press the button again. The "
                 "form needs a cookie from this site; nothing else is stored.</p>",
        "address": "<p>The address {addr} cannot be opted out here. Please write to the "
                   "abuse contact given on the notice page.</p>",
        "busy": "<p>Too many opt-outs in the last hour. Please try again later or write "
                "to the abuse contact given on the notice page.</p>",
        "toomany": "<p>Too many attempts from your address or network in the last hour. Please "
                   "try again later or write to the abuse contact given on the notice page.</p>",
        "failed": "<p>The opt-out could not be stored. Please write to the abuse contact "
                  "given on the notice page.</p>",
        "units": ("seconds", "minutes", "hours", "days"),
        "unit1": ("second", "minute", "hour", "day"),
    },
    "de": {
        "back": "Zurück zum Hinweis",
        "confirm_title": "Verbindungen dieses Exits zu Ihrem Netz unterbinden",
        "confirm": "<p>Dieser Rechner sieht Sie mit der Adresse <strong>{addr}</strong>. "
                   "Wenn Sie den Knopf drücken, öffnet dieser Tor-Exit für {duration} "
                   "keine neuen Verbindungen zu <strong>{net}</strong>.</p>"
                   "<p>Sperren lässt sich nur die Adresse, von der aus Sie diese Seite "
                   "aufrufen. Nutzen Sie die Seite also aus dem Netz, das den unerwünschten "
                   "Verkehr empfängt. Die Sperre läuft von selbst ab; drücken Sie den "
                   "Knopf später erneut, wenn Sie sie länger brauchen.</p>",
        "button": "Verbindungen zu {net} für {duration} unterbinden",
        "done_title": "Erledigt",
        "done": "<p>Dieser Exit öffnet bis {until} UTC keine neuen Verbindungen zu "
                "<strong>{net}</strong>.</p>",
        "already": "<p>Für <strong>{net}</strong> gilt bereits eine Sperre.</p>",
        "error_title": "Sperre nicht möglich",
        "unavailable": "<p>Die Sperre ist auf diesem Rechner gerade nicht verfügbar: der "
                       "Egress-Guard, der sie durchsetzt, ist nicht installiert oder läuft "
                       "nicht. Bitte schreiben Sie an den Abuse-Kontakt auf der "
                       "Hinweisseite.</p>",
        "token": "<p>Das Formular ist abgelaufen, oder Ihr Browser hat es nicht wie "
                 "erwartet zurückgeschickt. Gehen Sie zurück, laden Sie die Seite neu und "
                 "drücken Sie den Knopf erneut. Das Formular braucht ein Cookie dieser "
                 "Seite; sonst wird nichts gespeichert.</p>",
        "address": "<p>Die Adresse {addr} kann hier nicht gesperrt werden. Bitte schreiben "
                   "Sie an den Abuse-Kontakt auf der Hinweisseite.</p>",
        "busy": "<p>Zu viele Sperren in der letzten Stunde. Bitte versuchen Sie es später "
                "noch einmal oder schreiben Sie an den Abuse-Kontakt auf der "
                "Hinweisseite.</p>",
        "toomany": "<p>Zu viele Versuche von Ihrer Adresse oder Ihrem Netz in der letzten Stunde. "
                   "Bitte versuchen Sie es später noch einmal oder schreiben Sie an den "
                   "Abuse-Kontakt auf der Hinweisseite.</p>",
        "failed": "<p>Die Sperre konnte nicht gespeichert werden. Bitte schreiben Sie an "
                  "den Abuse-Kontakt auf der Hinweisseite.</p>",
        "units": ("Sekunden", "Minuten", "Stunden", "Tage"),
        "unit1": ("Sekunde", "Minute", "Stunde", "Tag"),
    },
}

PAGE = """<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<link rel="stylesheet" href="/notice.css">
</head>
<body>
<main>
<h1>{title}</h1>
{body}
<p><a href="/">{back}</a></p>
</main>
</body>
</html>
"""


class OptOutError(Exception):
    """A request that cannot be honoured; `key` names the message, `status` the HTTP status."""

    def __init__(self, key, status):
        super().__init__(key)
        self.key = key
        self.status = status


def _nets(*texts):
    return [ipaddress.ip_network(text) for text in texts]


# Never opted out, whatever the operator's lab list says: the exit would cut itself
# off from itself, its link, whole address families or every NAT64 destination.
HARD_REFUSED = [
    ("this-network", _nets("0.0.0.0/8")), ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")), ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    ("broadcast", _nets("255.255.255.255/32")), ("IPv4-mapped", _nets("::ffff:0:0/96")),
    ("IPv4-compatible or unspecified", _nets("::/96")), ("IPv4-translated", _nets("::ffff:0:0:0/96")),
    ("NAT64", _nets("64:ff9b::/96", "64:ff9b:1::/48")),
]
# Not global unicast (IANA special-purpose registries); an operator whose lab uses
# such a range can allow it with --lab-network.
SPECIAL = [
    ("private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("CGNAT (shared address space)", _nets("100.64.0.0/10")),
    ("IETF protocol assignments", _nets("192.0.0.0/24", "2001::/23")),
    ("documentation", _nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20")),
    ("benchmarking", _nets("198.18.0.0/15")),
    ("6to4", _nets("192.88.99.0/24", "2002::/16")),
    ("reserved", _nets("240.0.0.0/4", "100::/64")),
    ("unique local (ULA)", _nets("fc00::/7")), ("site-local", _nets("fec0::/10")),
]
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


def refusal(net, lab=()):
    """Why `net` must not be opted out, or None. `lab` networks lift the SPECIAL
    refusals (never the HARD ones) for networks inside them."""
    for reason, nets in HARD_REFUSED:
        if any(net.version == bad.version and net.overlaps(bad) for bad in nets):
            return reason
    if any(net.version == ok.version and net.subnet_of(ok) for ok in lab):
        return None
    for reason, nets in SPECIAL:
        if any(net.version == bad.version and net.overlaps(bad) for bad in nets):
            return reason
    if net.version == 6 and not net.subnet_of(GLOBAL_UNICAST_V6):
        return "reserved (not global unicast)"
    return None


def visitor_network(addr_text, prefix_v4=32, prefix_v6=128, never=(), lab=()):
    """Return the network to opt out for the visitor address `addr_text`.

    Raises ValueError for anything that is not a single global unicast address
    (see refusal(); scoped addresses such as fe80::1%eth0 too), and for networks
    overlapping the operator's `never` list: an opt-out must never cut the exit
    off from itself or from networks the operator protects.
    """
    text = (addr_text or "").strip()
    if "%" in text:
        raise ValueError("a scoped address cannot be opted out")
    addr = ipaddress.ip_address(text)
    prefix = prefix_v4 if addr.version == 4 else prefix_v6
    if prefix not in PREFIXES[addr.version]:
        raise ValueError(f"prefix length {prefix} is not allowed for IPv{addr.version}")
    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    for candidate in (ipaddress.ip_network(addr), net):
        reason = refusal(candidate, lab)
        if reason:
            raise ValueError(f"{reason} address: cannot be opted out")
    for protected in never:
        if net.version == protected.version and net.overlaps(protected):
            raise ValueError(f"{net} overlaps the protected network {protected}")
    return net


def _mac(secret, window, nonce):
    return hmac.new(secret, f"optout|{window}|{nonce}".encode(), hashlib.sha256).hexdigest()


def make_token(secret, nonce, now):
    """Form token for the browser holding `nonce`, valid in this and the next window."""
    window = int(now // WINDOW)
    return f"{window}.{_mac(secret, window, nonce)}"


def check_token(secret, nonce, token, now):
    """True when `token` was made by make_token for `nonce` in this or the previous window."""
    if not nonce or not token or not NONCE_RE.fullmatch(nonce):
        return False
    match = TOKEN_RE.fullmatch(token)
    if not match:
        return False
    window = int(match.group(1))
    if window not in (int(now // WINDOW), int(now // WINDOW) - 1):
        return False
    return hmac.compare_digest(match.group(2), _mac(secret, window, nonce))


def origin_allowed(environ):
    """Refuse cross-site posts: a browser's Origin must be the page's own origin.

    Browsers send Origin with every POST; a request without one does not come
    from a browser form, and the token and cookie still have to match.
    """
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return True
    expected = environ.get("HTTP_X_NOTICE_ORIGIN", "")
    return bool(expected) and origin == expected


def read_cookie(environ, name=COOKIE):
    for part in environ.get("HTTP_COOKIE", "").split(";"):
        key, _sep, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def duration(seconds, lang="en"):
    """Human form of a timeout: 86400 -> '24 hours', 20 -> '20 seconds', 604800 -> '7 days'."""
    singular, plural = STRINGS[lang]["unit1"], STRINGS[lang]["units"]
    for index, size in ((3, 86400), (2, 3600), (1, 60), (0, 1)):
        if seconds % size == 0 and (size != 86400 or seconds > 3 * 86400):
            count = seconds // size
            return f"{count} {singular[index] if count == 1 else plural[index]}"
    return f"{seconds} {plural[0]}"


class Guard:
    """The egress guard's opt-out sets: the nftables set `inet torexit_guard optout_vN`
    (written with nft) and the ipset `torexit_optout_vN` of the iptables and ufw
    backends (written with ipset). An opt-out goes to each of them that exists."""

    def __init__(self, nft="/usr/sbin/nft", table=TABLE, run=subprocess.run, ipset="/usr/sbin/ipset"):
        self.nft = nft
        self.table = table
        self.run = run
        self.ipset = ipset

    def _cmd(self, argv):
        try:
            return self.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:  # program not installed: that backend is absent
            return subprocess.CompletedProcess(argv, 127, "", "")

    @staticmethod
    def set_name(net):
        return f"optout_v{net.version}"

    @staticmethod
    def ipset_element(net):
        """ipset's notation: a host without /32 or /128, a network with its length."""
        return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)

    def backends(self, net):
        """The backends holding an opt-out set for `net`'s family: 'nftables', 'ipset'."""
        name = self.set_name(net)
        found = []
        if self._cmd([self.nft, "list", "set", "inet", self.table, name]).returncode == 0:
            found.append("nftables")
        if self._cmd([self.ipset, "list", "-n", IPSET_PREFIX + name]).returncode == 0:
            found.append("ipset")
        return found

    def available(self, net):
        return bool(self.backends(net))

    def _add(self, backend, net, timeout):
        if backend == "nftables":
            argv = [self.nft, "add", "element", "inet", self.table, self.set_name(net),
                    f"{{ {net} timeout {int(timeout)}s }}"]
        else:  # -exist: an element already there gets the new timeout
            argv = [self.ipset, "-exist", "add", IPSET_PREFIX + self.set_name(net), self.ipset_element(net),
                    "timeout", str(int(timeout))]
        return self._cmd(argv).returncode == 0

    def _contains(self, backend, net):
        if backend == "nftables":
            argv = [self.nft, "get", "element", "inet", self.table, self.set_name(net), f"{{ {net} }}"]
        else:
            argv = [self.ipset, "test", IPSET_PREFIX + self.set_name(net), self.ipset_element(net)]
        return self._cmd(argv).returncode == 0

    def contains(self, net):
        """Whether an opt-out of `net` is in force in any backend."""
        return any(self._contains(backend, net) for backend in self.backends(net))

    def add(self, net, timeout):
        """Add `net` for `timeout` seconds; return 'added' or 'present'."""
        backends = self.backends(net)
        if not backends:
            raise OptOutError("unavailable", "503 Service Unavailable")
        added = [self._add(backend, net, timeout) for backend in backends]
        if any(added):
            return "added"
        if any(self._contains(backend, net) for backend in backends):
            return "present"
        raise OptOutError("failed", "500 Internal Server Error")


class Window:
    """Times of events in the last rolling hour."""

    __slots__ = ("events",)

    def __init__(self):
        self.events = deque()

    def count(self, now):
        while self.events and now - self.events[0] >= 3600:
            self.events.popleft()
        return len(self.events)


class Limits:
    """The service's limits, in memory only (nothing on disk names an address).

    - per visitor address (IPv4 /32, IPv6 /128) and per IPv6 /64: at most
      `per_address` and `per_network` attempts per rolling hour. An attempt is a
      request that passed the form's token check, or a ban-visitor request;
      repeats and failures count here, so one client only uses up its own chances.
    - globally: at most `global_limit` NEW successful opt-outs per rolling hour;
      a repeat of an opt-out in force and a failed one do not count.

    Per-visitor entries are keyed by a keyed hash (BLAKE2b, random key held in
    memory) of the address or /64, and at most `max_keys` are kept; the oldest is
    forgotten first, which can only give its visitor a fresh allowance.
    """

    def __init__(self, global_limit, per_address=5, per_network=10, max_keys=65536,
                 clock=time.monotonic, key=None):
        self.global_limit = global_limit
        self.per_address = per_address
        self.per_network = per_network
        self.max_keys = max_keys
        self.clock = clock
        self.key = key or secrets.token_bytes(32)
        self.visitors = OrderedDict()
        self.new_optouts = Window()
        self.lock = threading.Lock()

    def _hash(self, net):
        data = net.network_address.packed + bytes([net.prefixlen])
        return hashlib.blake2b(data, key=self.key, digest_size=16).digest()

    def _keys(self, addr):
        host = ipaddress.ip_network(addr)
        keys = [(self._hash(host), self.per_address)]
        if addr.version == 6:
            keys.append((self._hash(ipaddress.ip_network(f"{addr}/64", strict=False)), self.per_network))
        return keys

    def attempt(self, addr):
        """Count an attempt from `addr`; False when it or its /64 is over its limit."""
        with self.lock:
            now = self.clock()
            windows = []
            for key, limit in self._keys(addr):
                window = self.visitors.get(key)
                if window is None:
                    window = self.visitors[key] = Window()
                self.visitors.move_to_end(key)
                if window.count(now) >= limit:
                    return False
                windows.append(window)
            for window in windows:
                window.events.append(now)
            while len(self.visitors) > self.max_keys:
                self.visitors.popitem(last=False)
            return True

    def global_full(self):
        with self.lock:
            return self.new_optouts.count(self.clock()) >= self.global_limit

    def record_new(self):
        with self.lock:
            self.new_optouts.events.append(self.clock())


class OptOutApp:
    """WSGI application: GET /optout/ shows the form, POST /optout/ opts out."""

    def __init__(self, guard, secret, timeout=86400, prefix_v4=32, prefix_v6=128, never=(),
                 max_per_hour=100, ban_visitors=False, clock=time.time, per_address=5, per_network=10,
                 lab=(), limits=None):
        self.guard = guard
        self.secret = secret
        self.timeout = timeout
        self.prefix_v4 = prefix_v4
        self.prefix_v6 = prefix_v6
        self.never = list(never)
        self.lab = list(lab)
        self.limits = limits or Limits(max_per_hour, per_address, per_network)
        self.ban_visitors = ban_visitors
        self.clock = clock
        self.write_lock = threading.Lock()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        lang = environ.get("HTTP_X_NOTICE_LANG", "en")
        if lang not in STRINGS:
            lang = "en"
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
        try:
            if path == "/optout/" and method in ("GET", "HEAD"):
                status, body = self.confirm(environ, lang, headers)
            elif path == "/optout/" and method == "POST":
                status, body = self.submit(environ, lang)
            elif path == "/ban-visitor" and self.ban_visitors:
                # a mirror of a page view (no form, no token): same address checks and limits
                self.opt_out(environ, self.network(environ))
                start_response("204 No Content", [("Cache-Control", "no-store")])
                return [b""]
            elif path == "/optout/":
                start_response("405 Method Not Allowed", [("Allow", "GET, HEAD, POST")])
                return [b""]
            else:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found\n"]
        except OptOutError as exc:
            status = exc.status
            body = self.page(lang, "error_title", STRINGS[lang][exc.key].format(
                addr=html.escape(environ.get("HTTP_X_REAL_IP", ""))))
        start_response(status, headers)
        return [b""] if method == "HEAD" else [body.encode("utf-8")]

    def network(self, environ):
        try:
            return visitor_network(environ.get("HTTP_X_REAL_IP", ""), self.prefix_v4,
                                   self.prefix_v6, self.never, self.lab)
        except ValueError:
            raise OptOutError("address", "400 Bad Request") from None

    def opt_out(self, environ, net):
        """Opt `net` out for the visitor in `environ`, within the limits; 'added' or 'present'."""
        if not self.limits.attempt(ipaddress.ip_address(environ["HTTP_X_REAL_IP"].strip())):
            raise OptOutError("toomany", "429 Too Many Requests")
        if not self.guard.available(net):
            raise OptOutError("unavailable", "503 Service Unavailable")
        with self.write_lock:  # one write at a time: the global count stays exact
            in_force = self.guard.contains(net)
            if not in_force and self.limits.global_full():
                raise OptOutError("busy", "429 Too Many Requests")
            outcome = self.guard.add(net, self.timeout)
            if outcome == "added" and not in_force:
                self.limits.record_new()
        return outcome

    def page(self, lang, title_key, body):
        strings = STRINGS[lang]
        return PAGE.format(lang=lang, title=html.escape(strings[title_key]), body=body,
                           back=html.escape(strings["back"]))

    def confirm(self, environ, lang, headers):
        strings = STRINGS[lang]
        net = self.network(environ)
        if not self.guard.available(net):
            raise OptOutError("unavailable", "503 Service Unavailable")
        nonce = read_cookie(environ)
        if not nonce or not NONCE_RE.fullmatch(nonce):
            nonce = secrets.token_urlsafe(24)
        secure = "; Secure" if environ.get("HTTP_X_FORWARDED_PROTO") == "https" else ""
        cookie = f"{COOKIE}={nonce}; Path=/optout/; Max-Age={2 * WINDOW}; HttpOnly; SameSite=Strict{secure}"
        headers.append(("Set-Cookie", cookie))
        length = duration(self.timeout, lang)
        values = {"addr": html.escape(str(ipaddress.ip_address(environ["HTTP_X_REAL_IP"].strip()))),
                  "net": html.escape(str(net)), "duration": html.escape(length)}
        token = html.escape(make_token(self.secret, nonce, self.clock()))
        button = html.escape(strings["button"].format(net=net, duration=length))
        form = ('<form method="post" action="/optout/">'
                f'<input type="hidden" name="token" value="{token}">'
                f'<button type="submit">{button}</button></form>')
        return "200 OK", self.page(lang, "confirm_title", strings["confirm"].format(**values) + form)

    def submit(self, environ, lang):
        try:
            size = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_BODY)
        except ValueError:
            size = 0
        fields = parse_qs(environ["wsgi.input"].read(size).decode("utf-8", "replace")) if size > 0 else {}
        token = (fields.get("token") or [""])[0]
        if not origin_allowed(environ) or not check_token(self.secret, read_cookie(environ), token,
                                                          self.clock()):
            raise OptOutError("token", "403 Forbidden")
        net = self.network(environ)
        outcome = self.opt_out(environ, net)
        strings = STRINGS[lang]
        if outcome == "present":
            return "200 OK", self.page(lang, "done_title", strings["already"].format(net=html.escape(str(net))))
        until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(self.clock() + self.timeout))
        return "200 OK", self.page(lang, "done_title", strings["done"].format(net=html.escape(str(net)), until=until))


class QuietHandler(WSGIRequestHandler):
    """Request handler that never logs: log lines would hold visitor addresses.

    `timeout` is the socket timeout of each connection: a client that sends or
    reads too slowly is dropped instead of holding a thread."""

    timeout = 10

    def log_message(self, format, *args):
        pass


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per connection, at most `max_threads` at once: a connection
    beyond that is closed at once rather than queued."""

    daemon_threads = True
    max_threads = 32

    def server_activate(self):
        super().server_activate()
        self.slots = threading.BoundedSemaphore(self.max_threads)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        # the default prints a traceback with the peer; say only what went wrong
        print(f"request failed: {sys.exc_info()[0].__name__}", file=sys.stderr)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8099", help="HOST:PORT, loopback only")
    parser.add_argument("--timeout", type=int, default=86400, help="seconds an opt-out lasts")
    parser.add_argument("--prefix-v4", type=int, default=32, choices=PREFIXES[4])
    parser.add_argument("--prefix-v6", type=int, default=128, choices=PREFIXES[6])
    parser.add_argument("--never", action="append", default=[],
                        type=lambda text: ipaddress.ip_network(text, strict=False),
                        help="network that is never opted out (repeatable)")
    parser.add_argument("--max-per-hour", type=int, default=100,
                        help="new opt-outs per hour, all visitors together (repeats and failures do not count)")
    parser.add_argument("--per-address", type=int, default=5, help="attempts per hour from one address")
    parser.add_argument("--per-network", type=int, default=10, help="attempts per hour from one IPv6 /64")
    parser.add_argument("--lab-network", action="append", default=[],
                        type=lambda text: ipaddress.ip_network(text, strict=False),
                        help="special-purpose network (private, documentation, benchmarking, ...) "
                             "that may be opted out anyway, for labs (repeatable)")
    parser.add_argument("--socket-timeout", type=float, default=10, help="seconds a slow client may take")
    parser.add_argument("--max-threads", type=int, default=32, help="connections served at once")
    parser.add_argument("--ban-visitors", action="store_true",
                        help="answer /ban-visitor (nginx mirrors every page view there)")
    parser.add_argument("--nft", default="/usr/sbin/nft")
    parser.add_argument("--ipset", default="/usr/sbin/ipset")
    args = parser.parse_args(argv)
    host, _sep, port = args.listen.rpartition(":")
    if not ipaddress.ip_address(host.strip("[]")).is_loopback:
        parser.error(f"--listen must be a loopback address, not {host}")
    if min(args.timeout, args.max_per_hour, args.per_address, args.per_network, args.max_threads) < 1 \
            or args.socket_timeout <= 0:
        parser.error("--timeout, --max-per-hour, --per-address, --per-network, --max-threads and "
                     "--socket-timeout must be positive")
    if args.timeout > IPSET_MAX_TIMEOUT:
        parser.error(f"--timeout must be at most {IPSET_MAX_TIMEOUT} seconds (ipset's limit)")
    args.host, args.port = host.strip("[]"), int(port)
    return args


def make_server(host, port, app, socket_timeout=10, max_threads=32):
    """The threading WSGI server with the given socket timeout and thread cap."""
    handler = type("Handler", (QuietHandler,), {"timeout": socket_timeout})
    server_class = type("Server", (ThreadingServer,), {
        "max_threads": max_threads,
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    server = server_class((host, port), handler)
    server.set_app(app)
    return server


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    app = OptOutApp(Guard(args.nft, ipset=args.ipset), secrets.token_bytes(32), args.timeout, args.prefix_v4,
                    args.prefix_v6, args.never, args.max_per_hour, args.ban_visitors,
                    per_address=args.per_address, per_network=args.per_network, lab=args.lab_network)
    server = make_server(args.host, args.port, app, args.socket_timeout, args.max_threads)
    server.serve_forever()


if __name__ == "__main__":
    main()
