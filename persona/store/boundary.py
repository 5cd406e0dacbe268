"""Where the drivers' errors stop: a class decorator that makes every public method of a
recorder (its generators and context managers too) raise persona's StoreError family in place
of the driver's own. Each backend says how its errors translate; an error that merely passes
through a context manager (raised by its caller's block) is left as it is."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any, TypeVar

from persona.errors import StoreBusyError, StoreConflictError, StoreDamagedError, StoreError

T = TypeVar("T")
Translate = Callable[[BaseException], StoreError | None]  # None: not a driver error


def store_error(message: str, *, busy: bool = False, damaged: bool = False, conflict: bool = False) -> StoreError:
    """persona's error for a driver's: conflict (ended to break a deadlock), busy (locked past the
    wait), damaged (not a database, or not readable as one), else plain. The message must name no value."""
    if conflict:
        return StoreConflictError(message)
    if busy:
        return StoreBusyError(message)
    if damaged:
        return StoreDamagedError(message)
    return StoreError(message)


def translating(translate: Translate) -> Callable[[type[T]], type[T]]:
    """Wrap every public method of the class (inherited ones too) and __init__."""

    def decorate(cls: type[T]) -> type[T]:
        names = {name for klass in cls.__mro__[:-1] for name in vars(klass)}
        for name in sorted(names):
            if name.startswith("_") and name != "__init__":
                continue
            attr = inspect.getattr_static(cls, name)
            if inspect.isfunction(attr):
                setattr(cls, name, _wrap(attr, translate))
        return cls

    return decorate


def _wrap(func: Callable[..., Any], translate: Translate) -> Callable[..., Any]:
    inner = getattr(func, "__wrapped__", None)
    if inner is not None and inspect.isgeneratorfunction(inner):  # a @contextmanager method
        return functools.wraps(func)(contextmanager(_generator(inner, translate)))
    if inspect.isgeneratorfunction(func):
        return _generator(func, translate)

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StoreError:
            raise
        except Exception as e:
            translated = translate(e)
            if translated is None:
                raise
            raise translated from e

    return call


def _generator(func: Callable[..., Generator[Any, Any, Any]], translate: Translate
               ) -> Callable[..., Generator[Any, Any, Any]]:
    """The generator, its own errors translated; an exception thrown into it (the block of a
    context manager raised it) comes out as it went in."""

    def translated(e: Exception, thrown: BaseException | None) -> BaseException:
        if e is thrown or isinstance(e, StoreError):
            return e
        return translate(e) or e

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        gen = func(*args, **kwargs)
        thrown: BaseException | None = None
        sent: Any = None
        while True:
            try:
                value = gen.send(sent) if thrown is None else gen.throw(thrown)
            except StopIteration as stop:
                return stop.value
            except Exception as e:
                out = translated(e, thrown)
                if out is e:
                    raise
                raise out from e
            thrown, sent = None, None
            try:
                sent = yield value
            except GeneratorExit:
                gen.close()
                raise
            except BaseException as e:
                thrown = e

    return run
