"""Runtime configuration routes (admin): read and replace sections, export and import them as one document."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm import config
from algoterm.api.permissions import IsAdmin
from algoterm.api.serializers import ErrorSerializer
from algoterm.console.serializers import (
    ConfigDocumentOutput,
    ConfigImportInput,
    ConfigImportOutput,
    ConfigListOutput,
    ConfigPutInput,
    ConfigSectionOutput,
)

_SECTIONS_TEXT = "; ".join(f"`{section.name}`: {section.description}" for section in config.SECTIONS.values())
SECTION_PARAMETER = OpenApiParameter(
    "section",
    str,
    OpenApiParameter.PATH,
    enum=list(config.SECTIONS),
    description="The section's name; another answers 404 NOT_FOUND.",
)
VALIDATION = OpenApiResponse(
    ErrorSerializer, description="VALIDATION_ERROR: `errors` names each bad field (`data.open`, `data.NSE.2.date`)."
)


# --- views ----------------------------------------------------------------------------------------------------------


class _AdminApi(APIView):
    permission_classes = [IsAuthenticated, IsAdmin]


class ConfigListApi(_AdminApi):
    @extend_schema(
        tags=["config"],
        operation_id="config_list",
        responses={200: ConfigListOutput},
        summary="Every runtime configuration section, with its version",
        description=f"The sections: {_SECTIONS_TEXT}",
    )
    def get(self, request: Request) -> Response:
        return Response(ConfigListOutput({"sections": list(config.config_all().values())}).data)


class ConfigSectionApi(_AdminApi):
    @extend_schema(
        tags=["config"],
        operation_id="config_section_get",
        parameters=[SECTION_PARAMETER],
        responses={200: ConfigSectionOutput},
        summary="One configuration section",
    )
    def get(self, request: Request, section: str) -> Response:
        return Response(ConfigSectionOutput(config.config_section_get(name=section)).data)

    @extend_schema(
        tags=["config"],
        operation_id="config_section_update",
        parameters=[SECTION_PARAMETER],
        request=ConfigPutInput,
        responses={
            200: ConfigSectionOutput,
            400: VALIDATION,
            409: OpenApiResponse(
                ErrorSerializer,
                description="CONFLICT: the section is no longer at `expected_version` (`current_version` says where).",
            ),
        },
        summary="Replace a configuration section",
        description="Validated as a whole (times HH:MM with open before close, valid and unique weekday holidays, "
        "positive whole numbers, known feed sources, no unknown fields), stored with the next version, audited "
        "(`config.update`, with what changed), and in effect at once in every process.",
    )
    def put(self, request: Request, section: str) -> Response:
        config.section_of(section)  # an unknown section is a 404 before its body is judged
        data = ConfigPutInput(data=request.data)
        data.is_valid(raise_exception=True)
        config.config_put(
            actor=request.user,
            name=section,
            data=data.validated_data["data"],
            expected_version=data.validated_data.get("expected_version"),
        )
        return Response(ConfigSectionOutput(config.config_section_get(name=section)).data)


class ConfigExportApi(_AdminApi):
    @extend_schema(
        tags=["config"],
        request=None,
        responses={200: ConfigDocumentOutput},
        summary="Export every section as one document",
        description="Each section's effective data (stored, else the default); POST /api/config/import takes it back.",
    )
    def post(self, request: Request) -> Response:
        document = config.config_export()
        filename = f"algoterm-config-{timezone.now():%Y%m%d-%H%M%S}.json"
        return Response(
            ConfigDocumentOutput(document).data, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )


class ConfigImportApi(_AdminApi):
    @extend_schema(
        tags=["config"],
        request=ConfigImportInput,
        responses={200: ConfigImportOutput, 400: VALIDATION},
        summary="Import an exported document, all or nothing",
        description="Every section in the document is validated first; one bad section changes nothing (400 naming "
        "`document.sections.<name>.<field>`). Sections the document leaves out stay as they are; each that differs "
        "is stored with its next version, and the import is audited (`config.import`). `dry_run` only reports.",
    )
    def post(self, request: Request) -> Response:
        data = ConfigImportInput(data=request.data)
        data.is_valid(raise_exception=True)
        result = config.config_import(
            actor=request.user, document=data.validated_data["document"], dry_run=data.validated_data["dry_run"]
        )
        return Response(ConfigImportOutput(result).data)
