"""Domain objects to TenantService's protobuf messages."""

from __future__ import annotations

import datetime as dt

from agentready.tenant.v1 import tenant_pb2
from google.protobuf import timestamp_pb2

from tenant_service.domain.model import (
    Member,
    Note,
    Organization,
    OrgState,
    Project,
    Role,
    ServiceAccountKey,
    User,
    etag,
)
from tenant_service.service_layer.tokens import Pair

ROLE_TO_PROTO = {
    Role.OWNER: tenant_pb2.ROLE_OWNER,
    Role.ADMIN: tenant_pb2.ROLE_ADMIN,
    Role.MEMBER: tenant_pb2.ROLE_MEMBER,
    Role.VIEWER: tenant_pb2.ROLE_VIEWER,
}
ROLE_FROM_PROTO = {v: k for k, v in ROLE_TO_PROTO.items()}
STATE_TO_PROTO = {
    OrgState.PROVISIONING: tenant_pb2.Organization.STATE_PROVISIONING,
    OrgState.ACTIVE: tenant_pb2.Organization.STATE_ACTIVE,
    OrgState.FAILED: tenant_pb2.Organization.STATE_FAILED,
    OrgState.DELETING: tenant_pb2.Organization.STATE_DELETING,
    OrgState.DELETED: tenant_pb2.Organization.STATE_DELETED,
}


def timestamp(when: dt.datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def user(u: User) -> tenant_pb2.User:
    """A User message."""
    return tenant_pb2.User(
        id=u.id,
        email=u.email,
        display_name=u.display_name,
        create_time=timestamp(u.created_at),
        update_time=timestamp(u.updated_at),
        etag=etag(u.version),
    )


def organization(o: Organization) -> tenant_pb2.Organization:
    """An Organization message."""
    message = tenant_pb2.Organization(
        slug=o.slug,
        uid=o.uid,
        display_name=o.display_name,
        state=STATE_TO_PROTO[o.state],
        state_reason=o.state_reason if o.state is OrgState.FAILED else "",
        labels=dict(o.labels),
        create_time=timestamp(o.created_at),
        update_time=timestamp(o.updated_at),
        etag=etag(o.version),
    )
    if o.deleted_at is not None and o.state.removing:
        message.delete_time.CopyFrom(timestamp(o.deleted_at))
    return message


def member(m: Member) -> tenant_pb2.Member:
    """A Member message."""
    return tenant_pb2.Member(
        organization=m.organization,
        user_id=m.user_id,
        email=m.email,
        role=ROLE_TO_PROTO[m.role],
        create_time=timestamp(m.created_at),
        update_time=timestamp(m.updated_at),
        etag=etag(m.version),
    )


def project(p: Project) -> tenant_pb2.Project:
    """A Project message."""
    return tenant_pb2.Project(
        organization=p.organization,
        id=p.id,
        display_name=p.display_name,
        description=p.description,
        create_time=timestamp(p.created_at),
        update_time=timestamp(p.updated_at),
        etag=etag(p.version),
    )


def note(n: Note) -> tenant_pb2.Note:
    """A Note message."""
    return tenant_pb2.Note(
        organization=n.organization,
        project=n.project,
        id=n.id,
        title=n.title,
        body=n.body,
        author_user_id=n.author_user_id,
        create_time=timestamp(n.created_at),
        update_time=timestamp(n.updated_at),
        etag=etag(n.version),
    )


def key(k: ServiceAccountKey) -> tenant_pb2.ServiceAccountKey:
    """A ServiceAccountKey message (never a token)."""
    return tenant_pb2.ServiceAccountKey(
        organization=k.organization,
        id=k.id,
        display_name=k.display_name,
        scopes=list(k.scopes),
        create_time=timestamp(k.created_at),
        update_time=timestamp(k.created_at),
        expire_time=timestamp(k.expires_at),
        etag=etag(1),
    )


def tokens(pair: Pair) -> tenant_pb2.TokenPair:
    """A TokenPair message."""
    return tenant_pb2.TokenPair(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        token_type="Bearer",  # noqa: S106 - the scheme's name, not a secret
        access_token_expire_time=timestamp(pair.access_expires_at),
        refresh_token_expire_time=timestamp(pair.refresh_expires_at),
    )
