"""Scheduled jobs: plain functions with explicit dependencies; only workers/scheduler.py knows
APScheduler."""
