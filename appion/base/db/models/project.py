"""projectdata: projects, their sessions and where each project's appion database is."""
from appion.base.db.fields import SinedonModel, ref, text

__all__ = ["Project", "ProcessingDB", "ProjectExperiment"]


class ProjectModel(SinedonModel):
    SINEDON_MODULE = "projectdata"

    class Meta(SinedonModel.Meta):
        abstract = True


class Project(ProjectModel):
    name = text()
    short_description = text()

    class Meta(ProjectModel.Meta):
        db_table = "projects"


class ProcessingDB(ProjectModel):
    project = ref("Project", "project", name="projects")
    appiondb = text()

    class Meta(ProjectModel.Meta):
        db_table = "processingdb"


class ProjectExperiment(ProjectModel):
    project = ref("Project", "project", name="projects")
    session = ref("SessionData", "session", module="leginondata")

    class Meta(ProjectModel.Meta):
        db_table = "projectexperiments"
