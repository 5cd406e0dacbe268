"""The GraphQL documents the console's pages ask, each built from what the signed-in token may
read: a part the token has no scope for is left out of the document (and the page says which
scope would show it), so a page never asks for what it would be refused."""

from __future__ import annotations

from collections.abc import Iterable

FEATURES = """frequency monetary aov recencyDays firstOrderAt lastOrderAt refunds refundAmount
  interpurchaseMeanDays expectedNextPurchaseAt rfm { r f m code } pageViews productViews searches sessions
  sessionMeanDurationS conversionRate viewedSkus convertedSkus appSessions appMinutes reviews reviewMeanRating
  categoryAffinity { category score } topCategories behaviorEvents activeDays hourOfDay dayOfWeek firstSeenAt
  lastSeenAt lifecycleStage"""
ATTRIBUTES = """gender birthYear age region city country language languages signupAt
  consent { analytics marketing personalization } custom"""


def person(scopes: Iterable[str], *, as_of: bool) -> str:
    """One person's page: what the token may read of them, now or as of an instant (the parts
    kept for the present only are left out of a page of the past)."""
    held = set(scopes)
    parts = ["id version updatedAt", f"attributeValues {{ {ATTRIBUTES} }}", f"featureValues {{ {FEATURES} }}",
             "identities { namespace hash profileId }", "merges { profiles identifiers mergedAt undoneAt }"]
    if not as_of:
        parts += ["liveSegments { segment since }", "consent { purpose granted since source vouched }"]
        if "history:read" in held:
            parts.append("attributeProvenance { name strategy value derivedFrom"
                         " claims { source writer vouched eventId occurredAt weight } }")
        if "predictions:read" in held:
            parts.append("predictions { model version score label classes { name value }"
                         " contributions { feature value effect } asOf computedAt }")
            parts.append("recommendations(first: 10) { basis model computedAt"
                         " items { sku category because } }")
    body = "\n    ".join(parts)
    return ("query ConsolePerson($id: ID!, $asOf: DateTime) {\n"
            f"  profile(id: $id, asOf: $asOf) {{\n    {body}\n  }}\n}}")


TIMELINE = """query ConsoleTimeline($id: ID!, $asOf: DateTime, $first: Int!, $after: String, $types: [String!],
    $since: DateTime, $until: DateTime) {
  profile(id: $id, asOf: $asOf) {
    id version
    history(first: $first, after: $after, types: $types, since: $since, until: $until) {
      edges { cursor node { id version stream type source occurredAt recordedAt writer data
        subject { namespace hash } } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""

FIND = """query ConsoleFind($subject: SubjectInput!) { profile(subject: $subject) { id } }"""

PEOPLE = """query ConsolePeople($first: Int!, $after: String) {
  profiles(first: $first, after: $after) {
    edges { cursor node { id version updatedAt
      featureValues { frequency monetary recencyDays lifecycleStage rfm { code } } } }
    pageInfo { hasNextPage endCursor }
  }
}"""

ERASE = """mutation ConsoleErase($id: ID!) {
  eraseProfile(id: $id) {
    profileId mergedProfiles erasedAt keyFingerprint purgedAt purgeDueBy walTruncated
    deleted { name count } destinationsNotified { destination acknowledged outcome } receipt
  }
}"""

UNLINK = """mutation ConsoleUnlink($a: SubjectInput!, $b: SubjectInput!) {
  unlinkIdentities(a: $a, b: $b) { id version }
}"""

SEGMENTS = """query ConsoleSegments { segments { name rule size createdAt createdBy clocked scored
  history(days: 30) { day size } } }"""

STAGES = """query ConsoleStages($metric: String!, $epsilon: Float) {
  insights(groupBy: ["lifecycle_stage"], metric: $metric, epsilon: $epsilon) {
    groups { key count mean distribution { from to count } } k threshold epsilon epsilonRemaining
  }
}"""

RFM_GRID = """query ConsoleRfm { insights(groupBy: ["rfm_r", "rfm_f"]) { groups { key count } k } }"""

MODELS = """query ConsoleModels { models {
  name version status task family createdAt promotedAt horizonDays stale why fingerprint libraries
  heldOut { name value } baselineMetrics { name metrics { name value } }
  gain { metric model baseline against improvement }
  training { cutoffs horizonDays trainRows testRows }
  lastDrift { measuredAt people psiMax psiLimit psiTop { name value } ageDays stale reasons }
} }"""

PROMOTE = """mutation ConsolePromote($name: String!, $version: Int!) {
  promoteModel(name: $name, version: $version) { name version status }
}"""

ROLLBACK = """mutation ConsoleRollback($name: String!) { rollbackModel(name: $name) { name version status } }"""

OPERATIONS = """query ConsoleOperations($before: Int, $profileId: ID) { operations {
  ingestRuns(first: 20) { seq at writer outcome received appended duplicates quarantined profilesCreated merges }
  quarantine(first: 50) { id recordedAt origin line reason size expiresAt }
  destinations { name host segments fields onChange purpose pending delivered skipped dead lastDeliveredAt
    deadLetters { delivery kind profileId segment attempts outcome } }
  audit(first: 50, before: $before, profileId: $profileId) { seq at writer operation profileId fields outcome detail }
} }"""
