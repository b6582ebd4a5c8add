"""JSON routes for programs (the simulated annotators, `rlhfkit iterate`): same rules as the pages.

Log in with `POST /api/login` (JSON body); the reply carries the CSRF token to send back in
the `X-CSRF-Token` header on every later POST. Answers are in screen terms, like a person's:
pair `{"choice": "A"|"B"|"tie"|"both_bad"}`, thumbs `{"choice": "up"|"down"}`, rank `{"ranking": [screen slots best first]}`,
demo `{"response": "..."}`, plus optional `{"flags": {"<slot>": [names]}, "note": "..."}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from rlhfkit.feedback import assign, auth, stats
from rlhfkit.feedback.assign import ScreenAnswer
from rlhfkit.feedback.webutil import (
    api_admin,
    api_json_checked,
    api_user,
    app_config,
    app_db,
    clear_session_cookie,
    client_ip,
    read_json,
    set_session_cookie,
)

router = APIRouter(prefix="/api")


def _user_json(user: auth.User) -> dict[str, Any]:
    return {"name": user.name, "role": user.role}


@router.post("/login")
def api_login(request: Request, data: dict = Depends(read_json)) -> Response:
    # No CSRF token exists yet; a JSON content type is the guard (cross-site forms cannot send it).
    name, password = data.get("name"), data.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        raise HTTPException(422, 'Send {"name": ..., "password": ...} as strings.')
    config = app_config(request)
    try:
        token, session = auth.login(app_db(request), name.strip(), password, ip=client_ip(request),
                                    session_seconds=config.session_seconds,
                                    max_failures=config.login_max_failures,
                                    window_seconds=config.login_window_seconds)
    except auth.LoginRateLimited as err:
        raise HTTPException(429, str(err), headers={"Retry-After": str(err.retry_after)}) from None
    except auth.LoginFailed as err:
        raise HTTPException(401, str(err)) from None
    response = JSONResponse({"user": _user_json(session.user), "csrf_token": session.csrf_token})
    set_session_cookie(response, config, token)
    return response


@router.post("/logout")
def api_logout(request: Request, checked: tuple = Depends(api_json_checked)) -> Response:
    session, _ = checked
    auth.logout(app_db(request), session)
    response = JSONResponse({"ok": True})
    clear_session_cookie(response, app_config(request))
    return response


@router.get("/me")
def api_me(session: auth.Session = Depends(api_user)) -> dict[str, Any]:
    return {"user": _user_json(session.user)}


@router.post("/next")
def api_next(request: Request, checked: tuple = Depends(api_json_checked)) -> dict[str, Any]:
    session, _ = checked
    task = assign.lease_next(app_db(request), session.user, lease_seconds=app_config(request).lease_seconds)
    return {"task": task.to_json() if task else None}


@router.get("/assignments/{assignment_id}")
def api_assignment(assignment_id: str, request: Request, session: auth.Session = Depends(api_user)) -> dict:
    try:
        task, status = assign.get_task(app_db(request), session.user, assignment_id)
    except assign.AssignmentNotFound:
        raise HTTPException(404, "No such assignment in your queue.") from None
    return {"task": task.to_json(), "status": status}


def answer_from_json(data: dict[str, Any]) -> ScreenAnswer:
    flags_raw = data.get("flags") or {}
    if not isinstance(flags_raw, dict):
        raise assign.InvalidAnswer('flags must be an object {"<slot>": [flag names]}')
    flags: dict[int, list[str]] = {}
    for slot, names in flags_raw.items():
        if not str(slot).isdigit() or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise assign.InvalidAnswer('flags must be an object {"<slot>": [flag names]}')
        flags[int(slot)] = names
    note = data.get("note", "")
    if not isinstance(note, str):
        raise assign.InvalidAnswer("note must be a string")
    choice, ranking, response = data.get("choice"), data.get("ranking"), data.get("response")
    if choice is not None and not isinstance(choice, str):
        raise assign.InvalidAnswer("choice must be a string")
    return ScreenAnswer(choice=choice, ranking=ranking, response=response, flags=flags, note=note)


@router.post("/assignments/{assignment_id}")
def api_submit(assignment_id: str, request: Request, checked: tuple = Depends(api_json_checked)) -> dict:
    session, data = checked
    try:
        judgment_id = assign.submit(app_db(request), session.user, assignment_id, answer_from_json(data))
    except assign.AssignmentNotFound:
        raise HTTPException(404, "No such assignment in your queue.") from None
    except assign.InvalidAnswer as err:
        raise HTTPException(422, f"Not saved: {err}.") from None
    except assign.AlreadySubmitted as err:
        raise HTTPException(409, f"Not saved again: {err}.") from None
    except assign.LeaseExpired as err:
        raise HTTPException(410, f"Not saved: {err}.") from None
    return {"judgment_id": judgment_id}


@router.post("/assignments/{assignment_id}/skip")
def api_skip(assignment_id: str, request: Request, checked: tuple = Depends(api_json_checked)) -> dict:
    session, _ = checked
    try:
        assign.skip(app_db(request), session.user, assignment_id)
    except assign.AssignmentNotFound:
        raise HTTPException(404, "No such assignment in your queue.") from None
    except assign.AlreadySubmitted as err:
        raise HTTPException(409, f"Not skipped: {err}.") from None
    return {"ok": True}


@router.get("/stats")
def api_stats(request: Request, session: auth.Session = Depends(api_admin)) -> dict:
    return stats.collect_stats(app_db(request))
