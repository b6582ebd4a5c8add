"""The preference collection app: a server-rendered web app where people compare, rank and write
responses, with its database, agreement statistics and export to training files.

Never imports torch. Entry points: `rlhfkit.feedback.commands` (init_db, create_user,
import_items, serve, start_server, stats, export) and `rlhfkit.feedback.client.FeedbackClient`.
"""
