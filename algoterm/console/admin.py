"""Operators' views of the platform's own rows, read-only (the system and configuration services own their writes),
and the operators' dashboard page, which hangs off the platform state's admin URLs and is linked from the index."""

from __future__ import annotations

import json

from django.contrib import admin
from django.urls import path
from django.utils.html import format_html

from algoterm.admin_mixins import ReadOnlyMixin
from algoterm.console.dashboard import dashboard_view
from algoterm.models import ConfigSection, PlatformState


@admin.register(PlatformState)
class PlatformStateAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["__str__", "mode", "trading_halted", "halt_reason", "changed_by", "changed_at"]
    list_select_related = ["changed_by"]
    fields = ["mode", "trading_halted", "halt_reason", "changed_by", "changed_at"]

    def get_urls(self):
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard), name="algoterm_dashboard"),
            *super().get_urls(),
        ]

    def dashboard(self, request):
        return dashboard_view(request, admin_site=self.admin_site)


@admin.register(ConfigSection)
class ConfigSectionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["name", "version", "updated_by", "updated_at"]
    list_select_related = ["updated_by"]
    search_fields = ["name"]
    fields = ["name", "version", "settings", "updated_by", "updated_at"]
    readonly_fields = ["settings"]

    @admin.display(description="data")
    def settings(self, section: ConfigSection) -> str:
        return format_html("<pre>{}</pre>", json.dumps(section.data, indent=2, sort_keys=True, default=str))
