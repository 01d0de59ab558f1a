#!/bin/sh
# Maven settings for this agent pod, written before the Jenkins agent starts:
#   - a settings.xml mounted at $MAVEN_SETTINGS_FILE (default /etc/maven-settings/settings.xml)
#     is copied to ~/.m2/settings.xml;
#   - else, with MAVEN_MIRROR_URL set, ~/.m2/settings.xml gets one mirror for every repository
#     (id $MAVEN_MIRROR_ID, default "mirror", to match credentials in a server entry).
# Then it runs its arguments (the agent) in its place.
set -eu

m2="${HOME:-/home/jenkins}/.m2"
mounted="${MAVEN_SETTINGS_FILE:-/etc/maven-settings/settings.xml}"

xml_escape() {
  printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'
}

mkdir -p "$m2/repository"
if [ -f "$mounted" ]; then
  cp "$mounted" "$m2/settings.xml"
elif [ -n "${MAVEN_MIRROR_URL:-}" ]; then
  id="$(xml_escape "${MAVEN_MIRROR_ID:-mirror}")"
  url="$(xml_escape "$MAVEN_MIRROR_URL")"
  cat > "$m2/settings.xml" <<XML
<settings xmlns="http://maven.apache.org/SETTINGS/1.2.0"
          xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
          xsi:schemaLocation="http://maven.apache.org/SETTINGS/1.2.0 https://maven.apache.org/xsd/settings-1.2.0.xsd">
  <mirrors>
    <mirror>
      <id>${id}</id>
      <mirrorOf>*</mirrorOf>
      <url>${url}</url>
    </mirror>
  </mirrors>
</settings>
XML
fi

exec "$@"
