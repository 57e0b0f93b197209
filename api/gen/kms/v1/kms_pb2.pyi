from google.api import annotations_pb2 as _annotations_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncryptRequest(_message.Message):
    __slots__ = ("field", "plaintext", "context", "key_name")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FIELD_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    field: str
    plaintext: bytes
    context: _containers.ScalarMap[str, str]
    key_name: str
    def __init__(self, field: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., context: _Optional[_Mapping[str, str]] = ..., key_name: _Optional[str] = ...) -> None: ...

class EncryptReply(_message.Message):
    __slots__ = ("ciphertext", "key_version", "algorithm")
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    key_version: int
    algorithm: str
    def __init__(self, ciphertext: _Optional[bytes] = ..., key_version: _Optional[int] = ..., algorithm: _Optional[str] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("ciphertext", "field", "context", "key_name")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    field: str
    context: _containers.ScalarMap[str, str]
    key_name: str
    def __init__(self, ciphertext: _Optional[bytes] = ..., field: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., key_name: _Optional[str] = ...) -> None: ...

class DecryptReply(_message.Message):
    __slots__ = ("plaintext", "key_version")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    key_version: int
    def __init__(self, plaintext: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class EncryptItem(_message.Message):
    __slots__ = ("field", "plaintext", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FIELD_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    field: str
    plaintext: bytes
    context: _containers.ScalarMap[str, str]
    def __init__(self, field: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EncryptBatchRequest(_message.Message):
    __slots__ = ("items", "key_name")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[EncryptItem]
    key_name: str
    def __init__(self, items: _Optional[_Iterable[_Union[EncryptItem, _Mapping]]] = ..., key_name: _Optional[str] = ...) -> None: ...

class EncryptResult(_message.Message):
    __slots__ = ("status", "ciphertext", "key_version")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    status: _status_pb2.Status
    ciphertext: bytes
    key_version: int
    def __init__(self, status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., ciphertext: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class EncryptBatchReply(_message.Message):
    __slots__ = ("results", "algorithm")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EncryptResult]
    algorithm: str
    def __init__(self, results: _Optional[_Iterable[_Union[EncryptResult, _Mapping]]] = ..., algorithm: _Optional[str] = ...) -> None: ...

class DecryptItem(_message.Message):
    __slots__ = ("ciphertext", "field", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    field: str
    context: _containers.ScalarMap[str, str]
    def __init__(self, ciphertext: _Optional[bytes] = ..., field: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DecryptBatchRequest(_message.Message):
    __slots__ = ("items", "key_name")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DecryptItem]
    key_name: str
    def __init__(self, items: _Optional[_Iterable[_Union[DecryptItem, _Mapping]]] = ..., key_name: _Optional[str] = ...) -> None: ...

class DecryptResult(_message.Message):
    __slots__ = ("status", "plaintext", "key_version")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    status: _status_pb2.Status
    plaintext: bytes
    key_version: int
    def __init__(self, status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., plaintext: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class DecryptBatchReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DecryptResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DecryptResult, _Mapping]]] = ...) -> None: ...

class HashFieldRequest(_message.Message):
    __slots__ = ("field", "value", "key_name")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    field: str
    value: str
    key_name: str
    def __init__(self, field: _Optional[str] = ..., value: _Optional[str] = ..., key_name: _Optional[str] = ...) -> None: ...

class HashFieldReply(_message.Message):
    __slots__ = ("hash",)
    HASH_FIELD_NUMBER: _ClassVar[int]
    hash: str
    def __init__(self, hash: _Optional[str] = ...) -> None: ...

class RewrapRequest(_message.Message):
    __slots__ = ("ciphertext", "field", "context", "key_name")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    field: str
    context: _containers.ScalarMap[str, str]
    key_name: str
    def __init__(self, ciphertext: _Optional[bytes] = ..., field: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., key_name: _Optional[str] = ...) -> None: ...

class RewrapReply(_message.Message):
    __slots__ = ("ciphertext", "key_version")
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    key_version: int
    def __init__(self, ciphertext: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...

class RotateDataKeyRequest(_message.Message):
    __slots__ = ("reason", "key_name")
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    reason: str
    key_name: str
    def __init__(self, reason: _Optional[str] = ..., key_name: _Optional[str] = ...) -> None: ...

class RotateDataKeyReply(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: DataKeyInfo
    def __init__(self, key: _Optional[_Union[DataKeyInfo, _Mapping]] = ...) -> None: ...

class GetActiveDataKeyRequest(_message.Message):
    __slots__ = ("key_name",)
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    def __init__(self, key_name: _Optional[str] = ...) -> None: ...

class GetActiveDataKeyReply(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: DataKeyInfo
    def __init__(self, key: _Optional[_Union[DataKeyInfo, _Mapping]] = ...) -> None: ...

class GetDataKeyRequest(_message.Message):
    __slots__ = ("version", "key_name")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    version: int
    key_name: str
    def __init__(self, version: _Optional[int] = ..., key_name: _Optional[str] = ...) -> None: ...

class GetDataKeyReply(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: DataKeyInfo
    def __init__(self, key: _Optional[_Union[DataKeyInfo, _Mapping]] = ...) -> None: ...

class ListDataKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "key_name")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: str
    key_name: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[str] = ..., key_name: _Optional[str] = ...) -> None: ...

class ListDataKeysReply(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[DataKeyInfo]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[DataKeyInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("key_name",)
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    def __init__(self, key_name: _Optional[str] = ...) -> None: ...

class GetStatusReply(_message.Message):
    __slots__ = ("initialized", "algorithm", "rotate_interval_seconds", "active_version", "active_expires_at", "active_created_at", "active_encryption_count", "counts", "storage_type", "key_name", "versions_under_previous_root", "root_key_fingerprint")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    INITIALIZED_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ROTATE_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ENCRYPTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_UNDER_PREVIOUS_ROOT_FIELD_NUMBER: _ClassVar[int]
    ROOT_KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    initialized: bool
    algorithm: str
    rotate_interval_seconds: int
    active_version: int
    active_expires_at: int
    active_created_at: int
    active_encryption_count: int
    counts: _containers.ScalarMap[str, int]
    storage_type: str
    key_name: str
    versions_under_previous_root: int
    root_key_fingerprint: str
    def __init__(self, initialized: _Optional[bool] = ..., algorithm: _Optional[str] = ..., rotate_interval_seconds: _Optional[int] = ..., active_version: _Optional[int] = ..., active_expires_at: _Optional[int] = ..., active_created_at: _Optional[int] = ..., active_encryption_count: _Optional[int] = ..., counts: _Optional[_Mapping[str, int]] = ..., storage_type: _Optional[str] = ..., key_name: _Optional[str] = ..., versions_under_previous_root: _Optional[int] = ..., root_key_fingerprint: _Optional[str] = ...) -> None: ...

class PerformMaintenanceRequest(_message.Message):
    __slots__ = ("dry_run", "batch_size", "key_name")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    batch_size: int
    key_name: str
    def __init__(self, dry_run: _Optional[bool] = ..., batch_size: _Optional[int] = ..., key_name: _Optional[str] = ...) -> None: ...

class PerformMaintenanceReply(_message.Message):
    __slots__ = ("expired_marked", "records_reencrypted", "keys_destroyed", "remaining", "done")
    EXPIRED_MARKED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_REENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    KEYS_DESTROYED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    expired_marked: int
    records_reencrypted: int
    keys_destroyed: int
    remaining: int
    done: bool
    def __init__(self, expired_marked: _Optional[int] = ..., records_reencrypted: _Optional[int] = ..., keys_destroyed: _Optional[int] = ..., remaining: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class DataKeyInfo(_message.Message):
    __slots__ = ("id", "version", "algorithm", "status", "created_at", "updated_at", "expires_at", "encryption_count", "key_name", "destroy_after")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESTROY_AFTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    algorithm: str
    status: str
    created_at: int
    updated_at: int
    expires_at: int
    encryption_count: int
    key_name: str
    destroy_after: int
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ..., algorithm: _Optional[str] = ..., status: _Optional[str] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., encryption_count: _Optional[int] = ..., key_name: _Optional[str] = ..., destroy_after: _Optional[int] = ...) -> None: ...

class NamedKeyInfo(_message.Message):
    __slots__ = ("name", "algorithm", "rotate_interval_seconds", "rotate_after_encryptions", "destruction_wait_seconds", "description", "reserved", "active_version", "created_at", "updated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ROTATE_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROTATE_AFTER_ENCRYPTIONS_FIELD_NUMBER: _ClassVar[int]
    DESTRUCTION_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    algorithm: str
    rotate_interval_seconds: int
    rotate_after_encryptions: int
    destruction_wait_seconds: int
    description: str
    reserved: bool
    active_version: int
    created_at: int
    updated_at: int
    def __init__(self, name: _Optional[str] = ..., algorithm: _Optional[str] = ..., rotate_interval_seconds: _Optional[int] = ..., rotate_after_encryptions: _Optional[int] = ..., destruction_wait_seconds: _Optional[int] = ..., description: _Optional[str] = ..., reserved: _Optional[bool] = ..., active_version: _Optional[int] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "algorithm", "rotate_interval_seconds", "rotate_after_encryptions", "destruction_wait_seconds", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ROTATE_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROTATE_AFTER_ENCRYPTIONS_FIELD_NUMBER: _ClassVar[int]
    DESTRUCTION_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    algorithm: str
    rotate_interval_seconds: int
    rotate_after_encryptions: int
    destruction_wait_seconds: int
    description: str
    def __init__(self, name: _Optional[str] = ..., algorithm: _Optional[str] = ..., rotate_interval_seconds: _Optional[int] = ..., rotate_after_encryptions: _Optional[int] = ..., destruction_wait_seconds: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class CreateKeyReply(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: NamedKeyInfo
    def __init__(self, key: _Optional[_Union[NamedKeyInfo, _Mapping]] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetKeyReply(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: NamedKeyInfo
    def __init__(self, key: _Optional[_Union[NamedKeyInfo, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListKeysReply(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[NamedKeyInfo]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[NamedKeyInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateKeyRequest(_message.Message):
    __slots__ = ("name", "rotate_interval_seconds", "rotate_after_encryptions", "destruction_wait_seconds", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROTATE_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROTATE_AFTER_ENCRYPTIONS_FIELD_NUMBER: _ClassVar[int]
    DESTRUCTION_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    rotate_interval_seconds: int
    rotate_after_encryptions: int
    destruction_wait_seconds: int
    description: str
    def __init__(self, name: _Optional[str] = ..., rotate_interval_seconds: _Optional[int] = ..., rotate_after_encryptions: _Optional[int] = ..., destruction_wait_seconds: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class UpdateKeyReply(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: NamedKeyInfo
    def __init__(self, key: _Optional[_Union[NamedKeyInfo, _Mapping]] = ...) -> None: ...

class ScheduleKeyDestructionRequest(_message.Message):
    __slots__ = ("key_name", "version", "waiting_period_seconds")
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WAITING_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    version: int
    waiting_period_seconds: int
    def __init__(self, key_name: _Optional[str] = ..., version: _Optional[int] = ..., waiting_period_seconds: _Optional[int] = ...) -> None: ...

class ScheduleKeyDestructionReply(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: DataKeyInfo
    def __init__(self, key: _Optional[_Union[DataKeyInfo, _Mapping]] = ...) -> None: ...

class CancelKeyDestructionRequest(_message.Message):
    __slots__ = ("key_name", "version")
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    version: int
    def __init__(self, key_name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class CancelKeyDestructionReply(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: DataKeyInfo
    def __init__(self, key: _Optional[_Union[DataKeyInfo, _Mapping]] = ...) -> None: ...

class RekeyRequest(_message.Message):
    __slots__ = ("batch_size",)
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    def __init__(self, batch_size: _Optional[int] = ...) -> None: ...

class RekeyReply(_message.Message):
    __slots__ = ("rewrapped", "remaining", "done")
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    rewrapped: int
    remaining: int
    done: bool
    def __init__(self, rewrapped: _Optional[int] = ..., remaining: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class GenerateDataKeyRequest(_message.Message):
    __slots__ = ("key_name", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    context: _containers.ScalarMap[str, str]
    def __init__(self, key_name: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GenerateDataKeyReply(_message.Message):
    __slots__ = ("plaintext", "wrapped_key", "key_version", "key_name", "algorithm")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    wrapped_key: bytes
    key_version: int
    key_name: str
    algorithm: str
    def __init__(self, plaintext: _Optional[bytes] = ..., wrapped_key: _Optional[bytes] = ..., key_version: _Optional[int] = ..., key_name: _Optional[str] = ..., algorithm: _Optional[str] = ...) -> None: ...

class DecryptDataKeyRequest(_message.Message):
    __slots__ = ("key_name", "wrapped_key", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    wrapped_key: bytes
    context: _containers.ScalarMap[str, str]
    def __init__(self, key_name: _Optional[str] = ..., wrapped_key: _Optional[bytes] = ..., context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DecryptDataKeyReply(_message.Message):
    __slots__ = ("plaintext", "key_version")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    key_version: int
    def __init__(self, plaintext: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...
