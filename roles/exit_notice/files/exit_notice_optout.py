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
cookie) and by an Origin check. Nothing is logged about visitors.

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
from collections import deque
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


def visitor_network(addr_text, prefix_v4=32, prefix_v6=128, never=()):
    """Return the network to opt out for the visitor address `addr_text`.

    Raises ValueError for anything that is not a single global-looking unicast
    address, and for networks overlapping the operator's `never` list: an
    opt-out must never cut the exit off from loopback (its own resolver) or
    from networks the operator protects.
    """
    addr = ipaddress.ip_address((addr_text or "").strip())
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback or addr.is_unspecified or addr.is_multicast or addr.is_link_local:
        raise ValueError(f"address {addr} cannot be opted out")
    prefix = prefix_v4 if addr.version == 4 else prefix_v6
    if prefix not in PREFIXES[addr.version]:
        raise ValueError(f"prefix length {prefix} is not allowed for IPv{addr.version}")
    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
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


class RateLimit:
    """At most `limit` events per rolling hour, for all visitors together."""

    def __init__(self, limit, clock=time.monotonic):
        self.limit = limit
        self.clock = clock
        self.events = deque()
        self.lock = threading.Lock()

    def allow(self):
        with self.lock:
            now = self.clock()
            while self.events and now - self.events[0] >= 3600:
                self.events.popleft()
            if len(self.events) >= self.limit:
                return False
            self.events.append(now)
            return True


class OptOutApp:
    """WSGI application: GET /optout/ shows the form, POST /optout/ opts out."""

    def __init__(self, guard, secret, timeout=86400, prefix_v4=32, prefix_v6=128, never=(),
                 max_per_hour=100, ban_visitors=False, clock=time.time):
        self.guard = guard
        self.secret = secret
        self.timeout = timeout
        self.prefix_v4 = prefix_v4
        self.prefix_v6 = prefix_v6
        self.never = list(never)
        self.rate = RateLimit(max_per_hour)
        self.ban_visitors = ban_visitors
        self.clock = clock

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
                self.guard.add(self.network(environ), self.timeout)
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
                                   self.prefix_v6, self.never)
        except ValueError:
            raise OptOutError("address", "400 Bad Request") from None

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
        if not self.guard.available(net):
            raise OptOutError("unavailable", "503 Service Unavailable")
        if not self.rate.allow():
            raise OptOutError("busy", "429 Too Many Requests")
        outcome = self.guard.add(net, self.timeout)
        strings = STRINGS[lang]
        if outcome == "present":
            return "200 OK", self.page(lang, "done_title", strings["already"].format(net=html.escape(str(net))))
        until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(self.clock() + self.timeout))
        return "200 OK", self.page(lang, "done_title", strings["done"].format(net=html.escape(str(net)), until=until))


class QuietHandler(WSGIRequestHandler):
    """Request handler that never logs: log lines would hold visitor addresses."""

    def log_message(self, format, *args):
        pass


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8099", help="HOST:PORT, loopback only")
    parser.add_argument("--timeout", type=int, default=86400, help="seconds an opt-out lasts")
    parser.add_argument("--prefix-v4", type=int, default=32, choices=PREFIXES[4])
    parser.add_argument("--prefix-v6", type=int, default=128, choices=PREFIXES[6])
    parser.add_argument("--never", action="append", default=[],
                        type=lambda text: ipaddress.ip_network(text, strict=False),
                        help="network that is never opted out (repeatable)")
    parser.add_argument("--max-per-hour", type=int, default=100, help="opt-outs per hour, all visitors")
    parser.add_argument("--ban-visitors", action="store_true",
                        help="answer /ban-visitor (nginx mirrors every page view there)")
    parser.add_argument("--nft", default="/usr/sbin/nft")
    parser.add_argument("--ipset", default="/usr/sbin/ipset")
    args = parser.parse_args(argv)
    host, _sep, port = args.listen.rpartition(":")
    if not ipaddress.ip_address(host.strip("[]")).is_loopback:
        parser.error(f"--listen must be a loopback address, not {host}")
    if args.timeout < 1 or args.max_per_hour < 1:
        parser.error("--timeout and --max-per-hour must be positive")
    if args.timeout > IPSET_MAX_TIMEOUT:
        parser.error(f"--timeout must be at most {IPSET_MAX_TIMEOUT} seconds (ipset's limit)")
    args.host, args.port = host.strip("[]"), int(port)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    app = OptOutApp(Guard(args.nft, ipset=args.ipset), secrets.token_bytes(32), args.timeout, args.prefix_v4,
                    args.prefix_v6, args.never, args.max_per_hour, args.ban_visitors)
    if ":" in args.host:
        ThreadingServer.address_family = socket.AF_INET6
    server = ThreadingServer((args.host, args.port), QuietHandler)
    server.set_app(app)
    server.serve_forever()


if __name__ == "__main__":
    main()
