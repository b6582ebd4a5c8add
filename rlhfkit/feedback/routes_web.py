"""HTML routes for everyone: log in / out and the annotator's queue (one small form per task)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from rlhfkit.feedback import assign, auth
from rlhfkit.feedback.assign import FLAGS, ScreenAnswer
from rlhfkit.feedback.security import new_token, tokens_equal
from rlhfkit.feedback.textcheck import invisible_characters
from rlhfkit.feedback.webutil import (
    LOGIN_CSRF_COOKIE,
    Form,
    app_config,
    app_db,
    clear_session_cookie,
    client_ip,
    current_session,
    read_form,
    render,
    set_session_cookie,
    web_form_checked,
    web_user,
)

router = APIRouter()


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/")
def index(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return _see_other("/login")
    return _see_other("/admin" if session.user.is_admin else "/annotate")


def _login_page(request: Request, status_code: int = 200, error: str = "", name: str = "") -> Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_token()
    response = render(request, "login.html", status_code=status_code, login_csrf=token, error=error, name=name)
    config = app_config(request)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=config.secure_cookies,
                        path="/", max_age=3600)
    return response


@router.get("/login")
def login_form(request: Request) -> Response:
    if current_session(request) is not None:
        return _see_other("/")
    return _login_page(request)


@router.post("/login")
def login_submit(request: Request, form: Form = Depends(read_form)) -> Response:
    # Before a session exists, CSRF is the double-submit pattern: the form's token must
    # equal the HttpOnly, SameSite=Strict cookie set with the login page.
    if not tokens_equal(request.cookies.get(LOGIN_CSRF_COOKIE), form.get("csrf_token")):
        return _login_page(request, 403, "The login form expired; please try again.")
    config = app_config(request)
    name = form.get("name").strip()
    try:
        token, _ = auth.login(app_db(request), name, form.get("password"), ip=client_ip(request),
                              session_seconds=config.session_seconds, max_failures=config.login_max_failures,
                              window_seconds=config.login_window_seconds)
    except auth.LoginRateLimited as err:
        response = _login_page(request, 429, str(err), name)
        response.headers["Retry-After"] = str(err.retry_after)
        return response
    except auth.LoginFailed as err:
        return _login_page(request, 401, str(err), name)
    response = _see_other("/")
    set_session_cookie(response, config, token)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=config.secure_cookies)
    return response


@router.post("/logout")
def logout(request: Request, checked: tuple = Depends(web_form_checked)) -> Response:
    session, _ = checked
    auth.logout(app_db(request), session)
    response = _see_other("/login")
    clear_session_cookie(response, app_config(request))
    return response


@router.get("/annotate")
def annotate_home(request: Request, session: auth.Session = Depends(web_user)) -> Response:
    task = assign.current_task(app_db(request), session.user)
    if task is not None:
        return _see_other(f"/annotate/{task.assignment_id}")
    return render(request, "annotate_home.html", message=request.query_params.get("m", "")[:40])


@router.post("/annotate/next")
def annotate_next(request: Request, checked: tuple = Depends(web_form_checked)) -> Response:
    session, _ = checked
    return _lease_and_redirect(request, session)


def _lease_and_redirect(request: Request, session: auth.Session, message: str = "") -> Response:
    task = assign.lease_next(app_db(request), session.user, lease_seconds=app_config(request).lease_seconds)
    if task is None:
        return _see_other("/annotate?m=done" if not message else f"/annotate?m={message}-done")
    return _see_other(f"/annotate/{task.assignment_id}")


def response_labels(k: int) -> list[str]:
    """A, B, … for the responses on screen; numbers past Z (an item imported before the 3-9 bound held)."""
    return [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(k)]


def _task_page(request: Request, task: assign.Task, status: str, status_code: int = 200, error: str = "",
               form: Form | None = None) -> Response:
    invisible = sorted({mark for text in [task.prompt, *task.responses] for mark in invisible_characters(text)})
    return render(request, f"task_{task.kind}.html", status_code=status_code, task=task, status=status,
                  error=error, flags=FLAGS, invisible=invisible, letters=response_labels(len(task.responses)),
                  values=dict(form.fields) if form else {}, checked_flags=set(form.getlist("flag")) if form else set())


@router.get("/annotate/{assignment_id}")
def annotate_task(assignment_id: str, request: Request, session: auth.Session = Depends(web_user)) -> Response:
    try:
        task, status = assign.get_task(app_db(request), session.user, assignment_id)
    except assign.AssignmentNotFound:
        raise HTTPException(404, "No such assignment in your queue.") from None
    return _task_page(request, task, status)


def answer_from_form(kind: str, k: int, form: Form) -> ScreenAnswer:
    """Turn the task form into a screen answer; InvalidAnswer for malformed fields."""
    flags: dict[int, list[str]] = {}
    for value in form.getlist("flag"):
        slot, _, name = value.partition(":")
        if not slot.isdigit():
            raise assign.InvalidAnswer(f"malformed flag {value[:40]!r}")
        flags.setdefault(int(slot), []).append(name)
    answer = ScreenAnswer(flags=flags, note=form.get("note"))
    if kind in ("pair", "thumbs"):
        answer.choice = form.get("choice") or None
    elif kind == "rank":
        ranks: dict[int, int] = {}
        for slot in range(k):
            value = form.get(f"rank_{slot}")
            if not value.isdigit():
                raise assign.InvalidAnswer(f"give every response a rank from 1 to {k}")
            ranks[slot] = int(value)
        if sorted(ranks.values()) != list(range(1, k + 1)):
            raise assign.InvalidAnswer(f"use each rank from 1 to {k} exactly once")
        answer.ranking = sorted(ranks, key=ranks.__getitem__)
    elif kind == "demo":
        answer.response = form.get("response")
    return answer


@router.post("/annotate/{assignment_id}")
def annotate_submit(assignment_id: str, request: Request, checked: tuple = Depends(web_form_checked)) -> Response:
    session, form = checked
    db = app_db(request)
    try:
        task, status = assign.get_task(db, session.user, assignment_id)
        if status in ("submitted", "skipped"):
            raise assign.AlreadySubmitted(status)
        answer = answer_from_form(task.kind, len(task.responses), form)
        assign.submit(db, session.user, assignment_id, answer)
    except assign.AssignmentNotFound:
        raise HTTPException(404, "No such assignment in your queue.") from None
    except assign.InvalidAnswer as err:
        return _task_page(request, task, status, 422, f"Not saved: {err}.", form)
    except assign.AlreadySubmitted:
        raise HTTPException(409, "This item was already submitted; your first answer is kept.") from None
    except assign.LeaseExpired:
        raise HTTPException(410, "Your time on this item ran out and others completed it; take the next one.") from None
    return _lease_and_redirect(request, session, "saved")


@router.post("/annotate/{assignment_id}/skip")
def annotate_skip(assignment_id: str, request: Request, checked: tuple = Depends(web_form_checked)) -> Response:
    session, _ = checked
    try:
        assign.skip(app_db(request), session.user, assignment_id)
    except assign.AssignmentNotFound:
        raise HTTPException(404, "No such assignment in your queue.") from None
    except assign.AlreadySubmitted:
        raise HTTPException(409, "This item was already submitted.") from None
    return _lease_and_redirect(request, session, "skipped")
