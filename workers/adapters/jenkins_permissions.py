"""The permission a Jenkins 403 names, in the words Jenkins' own security screens use: so a
build failed for a permission the API user lacks says which one to grant.

Jenkins answers a missing permission 403 with the headers of AccessDeniedException3.
reportAsHeaders (jenkins core hudson/security/AccessDeniedException3.java):
X-Required-Permission holds the permission's id (Permission.getId: its owner class and name,
"hudson.model.Computer.Connect"). The header never carries a secret; the page's body is only
matched (discover_only), never repeated.
"""

from typing import Any

REQUIRED_PERMISSION_HEADER = "X-Required-Permission"
# Who Jenkins took the call for (AccessDeniedException3.reportAsHeaders): "anonymous" when no
# credentials reached it (HudsonAuthenticationEntryPoint answers such a call 403 with the same
# headers: jenkinsci/jenkins core hudson/security/HudsonAuthenticationEntryPoint.java)
AUTHENTICATED_AS_HEADER = "X-You-Are-Authenticated-As"
# Permission ids -> group/name as the matrix shows them (Permission.group.title, name:
# Computer.PERMISSIONS is "Agent", Item's "Job", Jenkins' "Overall").
_NAMES = {
    "hudson.model.Computer.Create": "Agent/Create",
    "hudson.model.Computer.Connect": "Agent/Connect",
    "hudson.model.Computer.Delete": "Agent/Delete",
    "hudson.model.Computer.Disconnect": "Agent/Disconnect",
    "hudson.model.Computer.Configure": "Agent/Configure",
    "hudson.model.Item.Build": "Job/Build",
    "hudson.model.Item.Cancel": "Job/Cancel",
    "hudson.model.Item.Read": "Job/Read",
    "hudson.model.Hudson.Read": "Overall/Read",
    "hudson.model.Hudson.Administer": "Overall/Administer",
}


def missing_permission(headers: Any) -> str | None:
    """The permission a 403's headers say the user lacks ("Agent/Connect"), or None."""
    value = (headers.get(REQUIRED_PERMISSION_HEADER) or "").strip() if headers else ""
    if not value:
        return None
    return _NAMES.get(value, value[:100])


# Permissions of Jenkins as a whole for our agents (Overall; Agent for a node not made yet, or
# made by us: ComputerSet.doCreateItem checks Jenkins' own ACL; a new computer's ACL is
# Jenkins', no folder above it): refused, every build is refused alike until an admin grants
# it. A job's permissions (Job/Build) are set per job or folder: that job's own setting.
_JENKINS_WIDE = ("hudson.model.Hudson.", "hudson.model.Computer.")


def jenkins_wide(headers: Any) -> bool:
    """Whether the permission a 403's headers name is Jenkins-wide for our agents."""
    value = (headers.get(REQUIRED_PERMISSION_HEADER) or "").strip() if headers else ""
    return value.startswith(_JENKINS_WIDE)


# Jenkins' 403 naming no permission on a job's pages: Jenkins.getItem (and a folder's,
# AbstractFolder.getItem) throws a plain AccessDeniedException "Please login to access job
# <name>" for an item the user may DISCOVER but not READ; AccessDeniedHandlerImpl answers it
# 403 with its accessDenied page, which shows the message, and reports headers only for an
# AccessDeniedException3 (jenkins core jenkins/model/Jenkins.java, hudson/security/
# AccessDeniedHandlerImpl.java, jenkins/model/Jenkins/accessDenied.jelly). Not localised.
_DISCOVER_ONLY = "please login to access job "


def discover_only(body: str) -> bool:
    """Whether a 403's page is Jenkins' for a job our user may only discover."""
    return _DISCOVER_ONLY in (body or "").lower()


def as_anonymous(headers: Any) -> bool:
    """Whether a 403's headers say Jenkins took the call as anonymous."""
    return bool(headers) and (headers.get(AUTHENTICATED_AS_HEADER) or "").strip() == "anonymous"
