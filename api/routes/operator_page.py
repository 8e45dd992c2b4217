"""`/operator`: the operator page (design §8 "Operator wire"). Server-rendered HTML, no build step,
no CDN, no external asset: chain head and each anchor's position, projection lag, open quarantine
cases with resolve forms, recent mints, integrity alarms.

Login (`/operator/login`) with the operator token, or with an operator wallet's session JWT (a
SIWE sign-in of a wallet in `BROKER_OPERATOR_WALLETS`; the page signs in with an injected wallet
when the browser has one). The session is the cookie `ak_operator` (HttpOnly, SameSite=Strict,
Path=/operator, Secure on https, 8 h); every form POST carries a CSRF token (the login form a
double-submit one). Responses forbid framing, caching and every script or style but their own
(a per-response CSP nonce).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from html import escape
from typing import Annotated, Any
from urllib.parse import quote

from litestar import MediaType, Request, Response, get, post
from litestar.datastructures import Cookie, State
from litestar.enums import RequestEncodingType
from litestar.params import Body, PathParameter, QueryParameter

from ledger.services.quarantine import QuarantineRefusal
from ledger.services.refusals import Refusal

from ..errors import ApiError
from ..operator import COOKIE, PAGE_SESSION_SECONDS, PageSession

LOGIN_COOKIE = "ak_operator_login"
FORM = Body(media_type=RequestEncodingType.URL_ENCODED)

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}
header{background:#1b1f24;color:#fff;padding:10px 20px;display:flex;justify-content:space-between;align-items:center}
header form{margin:0} main{padding:16px 20px;max-width:1200px}
section{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:12px 16px;margin-bottom:16px}
h1{font-size:18px;margin:0} h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceff2;vertical-align:top}
code{font-size:12px} .bad{color:#b42318} .ok{color:#067647} .note{padding:8px 12px;border-radius:4px;margin-bottom:12px}
.note.err{background:#fee4e2} .note.msg{background:#dcfae6} input[type=text],input[type=password]{width:100%;max-width:520px}
button{cursor:pointer} form.inline{display:inline;margin-left:8px}
"""  # noqa: E501  CSS served verbatim; wrapping would change the page bytes

SIWE_SCRIPT = """
document.getElementById('siwe').addEventListener('click', async function () {
  const out = document.getElementById('siwe-status');
  try {
    if (!window.ethereum) { out.textContent = 'No wallet in this browser: paste a session JWT instead.'; return; }
    const [address] = await window.ethereum.request({method: 'eth_requestAccounts'});
    const chainId = parseInt(await window.ethereum.request({method: 'eth_chainId'}), 16);
    const start = await fetch('/v1/auth/wallet/start', {method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({address: address, chain_id: chainId})}).then(r => r.json());
    if (!start.siwe_message) { out.textContent = start.message || 'sign-in failed'; return; }
    const signature = await window.ethereum.request({method: 'personal_sign', params: [start.siwe_message, address]});
    const done = await fetch('/v1/auth/wallet/verify', {method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({request_id: start.request_id, signature: signature})}).then(r => r.json());
    if (!done.session_jwt) { out.textContent = done.message || 'sign-in failed'; return; }
    document.getElementById('session_jwt').value = done.session_jwt;
    document.getElementById('jwt-form').submit();
  } catch (e) { out.textContent = String(e && e.message || e); }
});
"""


def _secure(request: Request, state: State) -> bool:
    return request.url.scheme == "https" or state.services.config.issuer.startswith("https://")


def _page(title: str, body: str, nonce: str, *, status: int = 200, cookies: list[Cookie] | None = None,
          script: str = "") -> Response[str]:
    html = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<style nonce=\"{nonce}\">{STYLE}</style></head><body>{body}"
            + (f"<script nonce=\"{nonce}\">{script}</script>" if script else "") + "</body></html>")
    return Response(html, status_code=status, media_type=MediaType.HTML, cookies=cookies or [], headers={
        "Content-Security-Policy": f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
                                   "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        "X-Frame-Options": "DENY", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff"})


def _redirect(location: str, cookies: list[Cookie] | None = None) -> Response[str]:
    return Response("", status_code=303, headers={"Location": location, "Cache-Control": "no-store"},
                    cookies=cookies or [], media_type=MediaType.TEXT)


def _session(request: Request, state: State) -> PageSession | None:
    return state.services.operator.pages.get(request.cookies.get(COOKIE))


def _check_csrf(session: PageSession, sent: str | None) -> None:
    if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise ApiError("forbidden", "forbidden: missing or wrong CSRF token", reason="csrf")


# --- login ---------------------------------------------------------------------------------------


@get("/operator/login", include_in_schema=False, sync_to_thread=False)
def operator_login_page(request: Request, state: State,
                        error: Annotated[str | None, QueryParameter()] = None) -> Response[str]:
    nonce = secrets.token_urlsafe(16)
    csrf = secrets.token_urlsafe(32)
    cookie = Cookie(key=LOGIN_COOKIE, value=csrf, path="/operator", httponly=True, samesite="strict",
                    secure=_secure(request, state), max_age=900)
    note = f"<div class='note err'>{escape(error[:300])}</div>" if error else ""
    body = f"""<header><h1>AgentKeys broker · operator</h1></header><main>{note}
<section><h2>Operator token</h2>
<form method=post action=/operator/login><input type=hidden name=csrf value="{csrf}">
<p><input type=password name=token id=token autocomplete=off placeholder="contents of BROKER_OPERATOR_TOKEN_FILE"></p>
<p><button type=submit id=token-login>Sign in</button></p></form></section>
<section><h2>Operator wallet (SIWE)</h2>
<p>A wallet listed in <code>BROKER_OPERATOR_WALLETS</code>: sign in with the wallet in this browser, or paste the
<code>session_jwt</code> of a <code>/v1/auth/wallet/verify</code> it made.</p>
<form method=post action=/operator/login id=jwt-form><input type=hidden name=csrf value="{csrf}">
<p><input type=text name=session_jwt id=session_jwt autocomplete=off placeholder="eyJ..."></p>
<p><button type=submit>Sign in with session</button> <button type=button id=siwe>Sign in with wallet</button>
<span id=siwe-status></span></p></form></section></main>"""
    return _page("Operator sign-in", body, nonce, cookies=[cookie], script=SIWE_SCRIPT)


@post("/operator/login", include_in_schema=False, status_code=303)
async def operator_login(request: Request, state: State,
                         data: Annotated[dict[str, str], FORM]) -> Response[str]:
    surface = state.services.operator
    sent, expected = data.get("csrf") or "", request.cookies.get(LOGIN_COOKIE) or ""
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _redirect("/operator/login?error=" + quote("The form expired; try again."))
    credential = (data.get("token") or data.get("session_jwt") or "").strip()
    try:
        operator = surface.auth.from_credential(credential)
    except Refusal as exc:
        return _redirect("/operator/login?error=" + quote(exc.message))
    sid, _ = surface.pages.create(operator)
    secure = _secure(request, state)
    return _redirect("/operator", cookies=[
        Cookie(key=COOKIE, value=sid, path="/operator", httponly=True, samesite="strict", secure=secure,
               max_age=PAGE_SESSION_SECONDS),
        Cookie(key=LOGIN_COOKIE, value="", path="/operator", httponly=True, samesite="strict", secure=secure,
               max_age=0)])


@post("/operator/logout", include_in_schema=False, status_code=303)
async def operator_logout(request: Request, state: State, data: Annotated[dict[str, str], FORM]) -> Response[str]:
    session = _session(request, state)
    if session is not None:
        _check_csrf(session, data.get("csrf"))
        state.services.operator.pages.drop(request.cookies.get(COOKIE))
    return _redirect("/operator/login", cookies=[Cookie(key=COOKIE, value="", path="/operator", httponly=True,
                                                        samesite="strict", secure=_secure(request, state),
                                                        max_age=0)])


# --- the page ------------------------------------------------------------------------------------


def _integrity_alarms(services: Any) -> list[str]:
    alarms = []
    for check in services.readiness_checks():
        if check.name.startswith(("ledger", "anchor/", "evm/")):
            result = check.run()
            if result.status != "ready":
                alarms.append(f"{check.name}: {result.status}: {result.detail}")
    return alarms


def _render(services: Any, session: PageSession, msg: str | None, error: str | None) -> str:
    from projections.mints import recent_mints, with_anchor_status
    from projections.quarantine import list_cases

    surface = services.operator
    surface.caught_up(1.0)
    head = services.ledger.head()
    positions = surface.anchor_positions()
    engine = services.projections.engine
    csrf = escape(session.csrf)
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{pos}</td><td class={'ok' if head.seq - pos == 0 else 'bad'}>"
        f"{head.seq - pos}</td></tr>" for name, pos in positions.items())
    lag = "".join(f"<tr><td>{escape(s.name)}</td><td>{s.position}</td><td>{s.lag}</td></tr>"
                  for s in services.projections.status())
    cases = list_cases(engine, status="open")
    case_rows = []
    for c in cases:
        if c.status == "reanchoring":
            action = "re-anchoring: the worker closes it once the anchor confirms"
        else:
            action = (f"<form method=post action='/operator/quarantine/{escape(c.case_id)}/resolve' class=resolve>"
                      f"<input type=hidden name=csrf value='{csrf}'>"
                      f"<select name=action><option value=reanchor>reanchor</option><option value=accept>accept"
                      f"</option><option value=revoke>revoke (kill switch: every session of the role)</option>"
                      f"</select> <input type=text name=reason required maxlength=500 placeholder=reason> "
                      f"<button type=submit>Resolve</button></form>")
        case_rows.append(
            f"<tr id='case-{escape(c.case_id)}'><td><code>{escape(c.case_id)}</code></td><td>{escape(c.status)}</td>"
            f"<td>{escape(c.reason)}</td><td><code>{escape(c.wallet)}</code><br><code>{escape(c.access_key_id)}</code>"
            f"</td><td>{escape(c.opened_at)}</td><td>{action}</td></tr>")
    cases_html = ("<table><tr><th>case</th><th>status</th><th>reason</th><th>wallet / key</th><th>opened</th>"
                  "<th>resolve</th></tr>" + "".join(case_rows) + "</table>") if case_rows else "<p>No open cases.</p>"
    mints = [with_anchor_status(m, positions) for m in recent_mints(engine, limit=20)]
    mint_rows = "".join(
        f"<tr><td>{m['first_seq']}</td><td>{escape(m['status'])}</td><td><code>{escape(m['wallet'])}</code></td>"
        f"<td>{escape(m['service'] or '')}</td><td>{escape(m['scope_path'] or '')}</td>"
        f"<td><code>{escape(m['access_key_id'] or '')}</code></td><td>{m['expiration'] or ''}</td>"
        f"<td>{escape(', '.join(n for n, ok in m['anchors'].items() if ok) or '-')}</td></tr>" for m in mints)
    alarms = _integrity_alarms(services)
    alarm_html = ("<ul>" + "".join(f"<li class=bad>{escape(a)}</li>" for a in alarms) + "</ul>") if alarms \
        else "<p class=ok>None.</p>"
    notes = (f"<div class='note msg' id=msg>{escape(msg[:300])}</div>" if msg else "") + \
            (f"<div class='note err' id=error>{escape(error[:300])}</div>" if error else "")
    return f"""<header><h1>AgentKeys broker · operator</h1><span>{escape(session.operator.name)}
<form method=post action=/operator/logout class=inline><input type=hidden name=csrf value='{csrf}'>
<button type=submit>Sign out</button></form></span></header><main>{notes}
<section><h2>Chain</h2><p>Head: seq <b id=head-seq>{head.seq}</b> <code>{escape(head.hash)}</code></p>
<table><tr><th>anchor</th><th>confirmed seq</th><th>behind</th></tr>{rows}</table></section>
<section><h2>Integrity alarms</h2>{alarm_html}</section>
<section><h2>Quarantine ({len(cases)} open)</h2>{cases_html}</section>
<section><h2>Projections</h2><table><tr><th>read model</th><th>position</th><th>lag</th></tr>{lag}</table></section>
<section><h2>Recent mints</h2><table><tr><th>seq</th><th>status</th><th>wallet</th><th>service</th><th>scope</th>
<th>access key</th><th>expires</th><th>confirmed by</th></tr>{mint_rows}</table></section></main>"""


@get("/operator", include_in_schema=False, sync_to_thread=True)
def operator_page(request: Request, state: State, msg: Annotated[str | None, QueryParameter()] = None,
                  error: Annotated[str | None, QueryParameter()] = None) -> Response[str]:
    session = _session(request, state)
    if session is None:
        return _redirect("/operator/login")
    return _page("Operator", _render(state.services, session, msg, error), secrets.token_urlsafe(16))


@post("/operator/quarantine/{case_id:str}/resolve", include_in_schema=False, status_code=303)
async def operator_page_resolve(case_id: Annotated[str, PathParameter()], request: Request, state: State,
                                data: Annotated[dict[str, str], FORM]) -> Response[str]:
    session = _session(request, state)
    if session is None:
        return _redirect("/operator/login")
    _check_csrf(session, data.get("csrf"))
    surface = state.services.operator
    try:
        result = await asyncio.to_thread(surface.quarantine.resolve, case_id, action=data.get("action") or "",
                                         reason=data.get("reason") or "", operator=session.operator.name)
    except QuarantineRefusal as exc:
        return _redirect("/operator?error=" + quote(f"{case_id}: {exc.reason}: {exc.message}"))
    return _redirect("/operator?msg=" + quote(f"{result.case_id}: {result.status} (seq {result.seq})"))


ROUTES = [operator_login_page, operator_login, operator_logout, operator_page, operator_page_resolve]
