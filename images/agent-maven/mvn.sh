#!/bin/sh
# mvn with ~/.m2/settings.xml written first (maven-settings-hook), so that a mounted settings
# file or MAVEN_MIRROR_URL is honoured however the agent was started: by this image's entry
# point, or injected by ci-autoscaler as the container's command (which skips the entry point).
exec /usr/local/bin/maven-settings-hook /usr/share/maven/bin/mvn "$@"
