using System.Net;

namespace Dingo.Routing;

/// <summary>One public port and where its connections go now. Target null: no primary is known.</summary>
public sealed record Route(int Port, string InstanceId, IPEndPoint? Target);
