"""HTML (and one JSON) routes for admins: overview, users, import, stats, export."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from rlhfkit.feedback import auth, stats
from rlhfkit.feedback.export import ExportOptions, build_rows, csv_bytes, export
from rlhfkit.feedback.importer import ImportValidationError, import_candidates
from rlhfkit.feedback.security import tokens_equal
from rlhfkit.feedback.webutil import app_config, app_db, render, web_admin, web_form_checked

router = APIRouter(prefix="/admin")


def _admin_checked(checked: tuple = Depends(web_form_checked)) -> tuple:
    session, form = checked
    if not session.user.is_admin:
        raise HTTPException(403, "This page is for admins only.")
    return session, form


@router.get("")
def overview(request: Request, session: auth.Session = Depends(web_admin)) -> Response:
    return render(request, "admin_home.html", stats=stats.collect_stats(app_db(request)),
                  extra=app_config(request).extra)


@router.get("/users")
def users_page(request: Request, session: auth.Session = Depends(web_admin)) -> Response:
    return render(request, "admin_users.html", users=auth.list_users(app_db(request)), error="", created="")


@router.post("/users")
def users_create(request: Request, checked: tuple = Depends(_admin_checked)) -> Response:
    session, form = checked
    db = app_db(request)
    name = form.get("name").strip()
    try:
        auth.create_user(db, name, form.get("role"), form.get("password"), actor=session.user)
    except ValueError as err:
        return render(request, "admin_users.html", status_code=422, users=auth.list_users(db), error=str(err),
                      created="")
    return render(request, "admin_users.html", users=auth.list_users(db), error="", created=name)


@router.post("/users/{name}/active")
def users_set_active(name: str, request: Request, checked: tuple = Depends(_admin_checked)) -> Response:
    session, form = checked
    active = form.get("active") == "1"
    if name == session.user.name and not active:
        raise HTTPException(422, "You cannot deactivate yourself.")
    try:
        auth.set_active(app_db(request), name, active, actor=session.user)
    except ValueError as err:
        raise HTTPException(404, str(err)) from None
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/import")
def import_page(request: Request, session: auth.Session = Depends(web_admin)) -> Response:
    return render(request, "admin_import.html", problems=[], report=None)


@router.post("/import")
async def import_upload(request: Request, session: auth.Session = Depends(web_admin)) -> Response:
    # Multipart (a file upload), so the CSRF token is read from the multipart fields here.
    async with request.form(max_files=1, max_fields=10) as form:
        if not tokens_equal(session.csrf_token, str(form.get("csrf_token", ""))):
            raise HTTPException(403, "The form's security token is missing or stale; reload the page and retry.")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return render(request, "admin_import.html", status_code=422, problems=["Choose a JSON Lines file."],
                          report=None)
        raw = await upload.read()
        filename = (upload.filename or "upload.jsonl")[-100:]
        try:
            overlap = int(str(form.get("overlap", "2")))
            gold_value = str(form.get("gold_overlap", "")).strip()
            gold_overlap = int(gold_value) if gold_value else None
        except ValueError:
            raise HTTPException(422, "Overlap must be a whole number.") from None
        on_duplicate = "skip" if form.get("skip_duplicates") == "1" else "error"
    try:
        report = await run_in_threadpool(import_candidates, app_db(request), raw, filename, overlap=overlap,
                                         gold_overlap=gold_overlap, on_duplicate=on_duplicate, actor=session.user)
    except ImportValidationError as err:
        return render(request, "admin_import.html", status_code=422, problems=err.problems, report=None)
    except ValueError as err:
        return render(request, "admin_import.html", status_code=422, problems=[str(err)], report=None)
    return render(request, "admin_import.html", problems=[], report=report)


@router.get("/stats")
def stats_page(request: Request, session: auth.Session = Depends(web_admin)) -> Response:
    return render(request, "admin_stats.html", stats=stats.collect_stats(app_db(request)))


@router.get("/stats.json")
def stats_json(request: Request, session: auth.Session = Depends(web_admin)) -> Response:
    return JSONResponse(stats.collect_stats(app_db(request)))


def _last_manifest(request: Request) -> dict | None:
    export_dir = app_config(request).export_dir
    path = export_dir / "manifest.json" if export_dir else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


@router.get("/export")
def export_page(request: Request, session: auth.Session = Depends(web_admin)) -> Response:
    return render(request, "admin_export.html", export_dir=str(app_config(request).export_dir or ""),
                  manifest=_last_manifest(request), error="")


@router.post("/export")
def export_run(request: Request, checked: tuple = Depends(_admin_checked)) -> Response:
    session, form = checked
    export_dir = app_config(request).export_dir
    if export_dir is None:
        raise HTTPException(409, "Exporting from the web page is off: start the server with an export folder.")
    try:
        options = ExportOptions(min_votes=int(form.get("min_votes", "2")),
                                eval_fraction=float(form.get("eval_fraction", "0")),
                                include_gold=form.get("include_gold") == "1",
                                ranking_aggregate=form.get("ranking_aggregate", "borda"))
    except ValueError as err:
        return render(request, "admin_export.html", status_code=422, export_dir=str(export_dir),
                      manifest=_last_manifest(request), error=str(err))
    manifest = export(app_db(request), export_dir, options, actor_id=session.user.id)
    return render(request, "admin_export.html", export_dir=str(export_dir), manifest=manifest, error="")


@router.get("/export/judgments.csv")
def export_csv(request: Request, session: auth.Session = Depends(web_admin)) -> Response:
    files, _ = build_rows(app_db(request), ExportOptions(min_votes=1, include_gold=True))
    return Response(csv_bytes(files["judgments.raw.jsonl"]), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": 'attachment; filename="judgments.csv"'})
