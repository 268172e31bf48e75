"""The dashboard in a browser: a sign-in form that exchanges an admin API key for an HttpOnly cookie.

A browser cannot send an ``Authorization`` header when a person types /dashboard, so GET /dashboard
accepts, besides the header, a session cookie. POST /dashboard/login checks the key once and sets the
cookie: HttpOnly (no script reads it), ``SameSite=Strict`` (no other site's page sends it), scoped to
``Path=/dashboard`` (the /v1 API never accepts it, so it cannot be used to post feedback), ``Secure``
when served over https. Every redirect is a relative path, never built from the request's Host.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from vlmops.serve.keys import SESSION_TTL_S, ApiKey

COOKIE = "vlmops_session"
SCOPE = "admin"


def login_page(error: str = "", status: int = 200) -> HTMLResponse:
    """The sign-in form (a 401 when it answers a request without credentials)."""
    from vlmops.report.html import render

    html = render(
        "login.html.j2",
        title="vlmops monitor",
        subtitle="the dashboard needs an API key with the admin scope",
        meta=[],
        sections=[{"id": "sign-in", "title": "Sign in"}],
        generator="vlmops serve",
        error=error,
        hours=round(SESSION_TTL_S / 3600),
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def wants_html(request: Request) -> bool:
    """A browser navigating (Accept lists text/html), not an API client."""
    return "text/html" in request.headers.get("accept", "")


def add_dashboard_routes(
    app: FastAPI,
    keys,
    authorise: Callable[[Request, str], Awaitable[ApiKey | None]],
    render: Callable[[], str],
) -> None:
    """GET /dashboard (header or session cookie), GET/POST /dashboard/login, POST /dashboard/logout."""
    sessions = keys if keys is not None and hasattr(keys, "session") else None

    async def page() -> HTMLResponse:
        return HTMLResponse(await asyncio.get_running_loop().run_in_executor(None, render))

    @app.get("/dashboard", response_class=HTMLResponse)
    async def dashboard(request: Request):
        """The monitoring dashboard (drift, estimated vs realised accuracy, alerts, versions).

        Needs an admin key: the Authorization header, or a browser session from /dashboard/login.
        """
        if keys is None:
            return await page()
        has_header = "authorization" in request.headers or "x-api-key" in request.headers
        cookie = request.cookies.get(COOKIE)
        if has_header or not (cookie or wants_html(request)):
            await authorise(request, SCOPE)  # the API's 401/403/429 for clients that send a key (or nothing)
            return await page()
        key = None if sessions is None or not cookie else sessions.session(cookie)
        if key is not None and key.allows(SCOPE):
            return await page()
        response = login_page("Your session has ended; sign in again." if cookie else "", status=401)
        if cookie:
            response.delete_cookie(COOKIE, path="/dashboard")
        return response

    @app.get("/dashboard/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form():
        return login_page()

    @app.post("/dashboard/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if sessions is None:
            return login_page("This server has no API keys to sign in with.", status=404)
        try:
            form = await request.form(max_files=0, max_fields=4)
        except Exception:
            return login_page("Send the form with its 'key' field.", status=400)
        token = str(form.get("key") or "").strip()
        key = keys(token) if token else None
        if key is None:
            return login_page("That key is unknown or revoked.", status=401)
        if not key.allows(SCOPE):
            message = f"Key {key.key_id} lacks the admin scope; create one with --scopes admin."
            return login_page(message, status=403)
        session = await asyncio.get_running_loop().run_in_executor(None, sessions.open_session, key)
        response = RedirectResponse("/dashboard", status_code=303)  # a path: the browser keeps its host
        response.set_cookie(
            COOKIE,
            session,
            max_age=int(SESSION_TTL_S),
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/dashboard/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        cookie = request.cookies.get(COOKIE)
        if sessions is not None and cookie:
            await asyncio.get_running_loop().run_in_executor(None, sessions.close_session, cookie)
        response = RedirectResponse("/dashboard/login", status_code=303)
        response.delete_cookie(COOKIE, path="/dashboard")
        return response
