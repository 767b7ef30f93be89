using Dingo.Store;
using Dingo.Tests.Support;
using Grpc.Core;

namespace Dingo.Tests.Etcd;

/// <summary>
/// Which failed etcd calls move the store to the next member: a member that cannot be reached, however gRPC words it,
/// and never an answer etcd itself gave (a refused or malformed request is the same on every member).
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class EtcdMemberFailoverTests
{
    public static TheoryData<string, StatusCode, Exception?, bool> Cases() => new()
    {
        { "member down", StatusCode.Unavailable, null, true },
        { "member silent past the call's deadline", StatusCode.DeadlineExceeded, null, true },
        // What a partitioned member produced in ThreeHostTests: the HTTP/2 keepalive ping went unanswered.
        { "keepalive ping unanswered", StatusCode.Internal, new HttpRequestException("The HTTP/2 server didn't respond to a ping request within the configured KeepAlivePingDelay."), true },
        { "connection reset under the call", StatusCode.Internal, new IOException("Connection reset by peer"), true },
        { "etcd's own internal error", StatusCode.Internal, null, false },
        { "a malformed request", StatusCode.InvalidArgument, null, false },
        { "a key too large for etcd", StatusCode.InvalidArgument, new HttpRequestException("not the reason"), false },
        { "permission denied", StatusCode.PermissionDenied, null, false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_call_moves_on_only_when_the_member_could_not_be_reached(string what, StatusCode code, Exception? transport, bool movesOn) =>
        Assert.True(movesOn == EtcdStore.MemberUnreachable(new RpcException(new Status(code, what, transport))), what);
}
