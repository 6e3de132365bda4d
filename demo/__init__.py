"""The demo: a small collaborative kanban board served by Starlette, kept live by Freshwire."""
