"""A Processing algorithm generated from a job's parameter schema: the same job, a third front."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ...backend.jobs import JobSpec, Param
from ..worker_client import JobCancelled, JobFailed, WorkerClient, WorkerError

RESULT_JSON = "RESULT_JSON"
RESULT = "RESULT"


def parameter_definition(param: Param) -> QgsProcessingParameterDefinition:
    """The Processing parameter for one job parameter: the schema's short label, its sentence as the help
    (the tooltip), the advanced ones under "Advanced Parameters"."""
    definition = _definition(param)
    definition.setHelp(param.help)
    if param.group == "advanced":
        definition.setFlags(definition.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
    return definition


def _definition(param: Param) -> QgsProcessingParameterDefinition:
    name, label = param.name.upper(), param.label
    optional = not param.required
    default = None if param.required else param.default
    if param.kind == "raster":
        return QgsProcessingParameterRasterLayer(name, label, optional=optional)
    if param.kind == "vector":
        return QgsProcessingParameterFeatureSource(name, label, [QgsProcessing.SourceType.TypeVectorAnyGeometry],
                                                   optional=optional)
    if param.kind == "file":
        return QgsProcessingParameterFile(name, label, optional=optional)
    if param.kind == "folder":
        return QgsProcessingParameterFile(name, label, QgsProcessingParameterFile.Behavior.Folder, optional=optional)
    if param.kind == "output_folder":
        return QgsProcessingParameterFolderDestination(name, label, optional=optional)
    if param.kind == "output_file":
        return QgsProcessingParameterFileDestination(name, label, optional=optional)
    if param.kind == "int":
        return QgsProcessingParameterNumber(name, label, QgsProcessingParameterNumber.Type.Integer, default,
                                            optional=optional)
    if param.kind == "float":
        return QgsProcessingParameterNumber(name, label, QgsProcessingParameterNumber.Type.Double, default,
                                            optional=optional)
    if param.kind == "bool":
        return QgsProcessingParameterBoolean(name, label, bool(default), optional=optional)
    if param.kind == "choice":
        index = param.choices.index(default) if default in param.choices else None
        return QgsProcessingParameterEnum(name, label, list(param.choices), defaultValue=index, optional=optional)
    return QgsProcessingParameterString(name, label, default, optional=optional)


class JobAlgorithm(QgsProcessingAlgorithm):
    """Runs one backend job in the worker; its result comes back as JSON (string and file)."""

    def __init__(self, spec: JobSpec, client_factory: Callable[[], WorkerClient]) -> None:
        super().__init__()
        self.spec = spec
        self._client_factory = client_factory

    def createInstance(self) -> JobAlgorithm:
        return JobAlgorithm(self.spec, self._client_factory)

    def name(self) -> str:
        return self.spec.name

    def displayName(self) -> str:
        return self.spec.title

    def group(self) -> str:
        return self.spec.group

    def groupId(self) -> str:
        return self.spec.group.lower().replace(" ", "_")

    def shortHelpString(self) -> str:
        return self.spec.help

    def initAlgorithm(self, config: Dict[str, Any] | None = None) -> None:
        for param in self.spec.params:
            self.addParameter(parameter_definition(param))
        self.addParameter(QgsProcessingParameterFileDestination(
            RESULT_JSON, "Result (JSON)", "JSON files (*.json)", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputString(RESULT, "Result"))

    def job_params(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                   feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        """Processing's values as the job's parameters: layers become file paths."""
        values: Dict[str, Any] = {}
        for param in self.spec.params:
            name = param.name.upper()
            if name not in parameters or parameters[name] is None:
                continue
            if param.kind == "raster":
                layer = self.parameterAsRasterLayer(parameters, name, context)
                if layer is None:
                    continue
                if layer.providerType() != "gdal":
                    raise QgsProcessingException(f"'{layer.name()}' is not a file raster GDAL can read")
                values[param.name] = layer.source()
            elif param.kind == "vector":
                values[param.name] = self.parameterAsCompatibleSourceLayerPath(
                    parameters, name, context, ["gpkg", "shp", "geojson"], "gpkg", feedback)
            elif param.kind in ("file", "folder"):
                values[param.name] = self.parameterAsFile(parameters, name, context)
            elif param.kind == "output_file":
                values[param.name] = self.parameterAsFileOutput(parameters, name, context)
            elif param.kind == "output_folder":
                values[param.name] = self.parameterAsString(parameters, name, context)
            elif param.kind == "int":
                values[param.name] = self.parameterAsInt(parameters, name, context)
            elif param.kind == "float":
                values[param.name] = self.parameterAsDouble(parameters, name, context)
            elif param.kind == "bool":
                values[param.name] = self.parameterAsBoolean(parameters, name, context)
            elif param.kind == "choice":
                values[param.name] = param.choices[self.parameterAsEnum(parameters, name, context)]
            else:
                values[param.name] = self.parameterAsString(parameters, name, context)
        return {k: v for k, v in values.items() if v not in ("", None)}

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        params = self.job_params(parameters, context, feedback)

        def on_progress(done: int, total: int, message: str) -> None:
            if total > 0:
                feedback.setProgress(100.0 * done / total)
            if message:
                feedback.setProgressText(message)

        try:
            result = self._client_factory().run(self.spec.name, params, on_progress=on_progress,
                                                is_cancelled=feedback.isCanceled)
        except JobCancelled as exc:
            raise QgsProcessingException(f"Cancelled: {exc}") from None
        except (JobFailed, WorkerError) as exc:
            raise QgsProcessingException(str(exc)) from None
        text = json.dumps(result, indent=2)
        feedback.pushInfo(text)
        outputs: Dict[str, Any] = {RESULT: text}
        destination = self.parameterAsFileOutput(parameters, RESULT_JSON, context)
        if destination:
            with open(destination, "w", encoding="utf-8") as handle:
                handle.write(text)
            outputs[RESULT_JSON] = destination
        return outputs
